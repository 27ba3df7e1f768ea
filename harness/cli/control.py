"""Commands on the pool: ``pause``, ``resume``, ``scale``."""

from __future__ import annotations

import click

from harness.cli.common import operator_event, workspace


@click.command()
@click.argument("reason", nargs=-1)
@click.pass_context
def pause(ctx: click.Context, reason: tuple[str, ...]) -> None:
    """Stop new claims (running items finish): writes state/interrupt-request.txt.

    \b
    Example:
      parallel-harness pause deploying the database migration
    """
    text = " ".join(reason) or "paused by the operator"
    workspace(ctx).pause(text)
    operator_event(ctx, "paused", reason=text)
    click.echo(f"paused: {text}")


@click.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Allow claims again (removes state/interrupt-request.txt).

    \b
    Example:
      parallel-harness resume
    """
    if not workspace(ctx).resume():
        click.echo("was not paused")
        return
    operator_event(ctx, "resumed", why="parallel-harness resume")
    click.echo("resumed")


@click.command()
@click.argument("workers", type=click.IntRange(0, 256))
@click.pass_context
def scale(ctx: click.Context, workers: int) -> None:
    """Change the pool size of the running coordinator (writes state/desired-workers).

    \b
    Example:
      parallel-harness scale 6
    """
    ws = workspace(ctx)
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    ws.desired_workers_file.write_text(f"{workers}\n")
    operator_event(ctx, "scaled", workers=workers)
    click.echo(f"desired workers: {workers}")
