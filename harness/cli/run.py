"""``run``: start the coordinator and its workers, print what happens, then a summary."""

from __future__ import annotations

import sys
from typing import Any

import click

from harness.cli.common import EXIT_USAGE, workspace


@click.command()
@click.option("--agents", type=click.IntRange(0, 256), default=None,
              help="Number of workers (default: [run] agents in harness.toml).")
@click.option("--forever", is_flag=True, help="Keep polling for new items instead of exiting.")
@click.option("--stale-after", type=float, default=None, help="Override [run] stale_after.")
@click.option("--tick", type=float, default=None, help="Override [run] tick.")
@click.pass_context
def run(ctx: click.Context, agents: int | None, forever: bool, stale_after: float | None = None,
        tick: float | None = None) -> None:
    """Run the coordinator and N workers until the queue is drained.

    Exit code 0 if every item of the run ended in done/, 1 if any ended in
    failed/ (or the run budget stopped it), 2 for usage or configuration
    errors, 128+N when stopped by signal N.

    \b
    Example:
      parallel-harness run --agents 4
    """
    overrides = {"run": {"agents": agents, "stale_after": stale_after, "tick": tick}}
    sys.exit(run_pool(workspace(ctx), overrides, forever=forever))


def run_pool(ws: Any, overrides: dict[str, dict[str, Any]], *, forever: bool) -> int:
    """Load the config, check it, start and supervise, print the summary; the exit code."""
    from harness import config as config_mod
    from harness.agents.prompts import PromptError
    from harness.cli.render import render_event, render_summary
    from harness.pool import preflight
    from harness.pool.coordinator import Coordinator, CoordinatorError
    from harness.queue.fsops import UnsupportedFilesystem
    from harness.views.status import collect

    def show(ev: dict[str, Any]) -> None:
        line = render_event(ev)
        if line is not None:
            click.echo(line)

    try:
        cfg = config_mod.load(ws.config_file, overrides)
        preflight.check(ws, cfg)
        coordinator = Coordinator(ws, cfg, forever=forever, on_event=show)
        coordinator.start()
    except (config_mod.ConfigError, CoordinatorError, preflight.PreflightError,
            UnsupportedFilesystem, PromptError) as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    click.echo(f"parallel-harness: {coordinator.desired_workers()} worker(s) in {ws.root}"
               f" ({'forever' if forever else 'until the queue is drained'}); Ctrl-C stops")
    counts = coordinator.queue.counts()
    if not forever and not (counts["pending"] or counts["claimed"] or counts["waiting"]):
        click.echo("nothing to run: no item is pending, claimed or waiting"
                   " (`parallel-harness enqueue` adds some); the summary below is of earlier"
                   " runs")
    code = coordinator.run()
    if coordinator.budget_hit:
        click.echo(f"parallel-harness: stopped: {coordinator.budget_hit}", err=True)
    click.echo(render_summary(collect(ws)))
    return code
