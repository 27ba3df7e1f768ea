"""Commands on the pool: ``pause``, ``resume``, ``scale``."""

from __future__ import annotations

from typing import Any

import click

from harness.cli.common import echo_json, operator_event, usage_error, workspace

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")


def _say(as_json: bool, text: str, **data: Any) -> None:
    if as_json:
        echo_json({"message": text, **data})
    else:
        click.echo(text)


def parse_until(text: str, now: float) -> float:
    """Epoch seconds of ``--until``: a duration (30m, 2h, 1d, 90s) or a local time
    (14:30, which is the next such time, or 2026-11-22T14:30, or with a UTC offset)."""
    import time
    from datetime import datetime, timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now + float(text[:-1]) * units[text[-1]]
    try:
        clock = datetime.strptime(text, "%H:%M")
    except ValueError:
        pass
    else:
        start = datetime.fromtimestamp(now)
        when = start.replace(hour=clock.hour, minute=clock.minute, second=0, microsecond=0)
        return (when if when > start else when + timedelta(days=1)).timestamp()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a duration (30m, 2h, 1d) or a time (14:30,"
                                 " 2026-11-22T14:30)", param_hint="--until") from None
    stamp = moment.timestamp()  # naive = local time
    if stamp <= now:
        raise click.BadParameter(f"{text!r} is in the past ({time.ctime(stamp)})",
                                 param_hint="--until")
    return stamp


def readable(stamp: float) -> str:
    """A local time an operator reads at a glance: 2026-11-22 14:30:00 CET (in 1h05m)."""
    import time

    from harness.cli.render import duration

    local = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))
    return f"{local} (in {duration(max(0.0, stamp - time.time()))})"


@click.command()
@click.argument("reason", nargs=-1)
@click.option("--until", "until", default=None, metavar="WHEN",
              help="Resume by itself then: 30m, 2h, 14:30 or 2026-11-22T14:30 (needs a running"
                   " coordinator to lift it).")
@json_option
@click.pass_context
def pause(ctx: click.Context, reason: tuple[str, ...], until: str | None, as_json: bool) -> None:
    """Stop new claims (running items finish): writes state/interrupt-request.txt.

    \b
    Examples:
      parallel-harness pause deploying the database migration
      parallel-harness pause --until 30m waiting for the CI fix
    """
    import time

    text = " ".join(reason) or "paused by the operator"
    resume_at = parse_until(until, time.time()) if until else None
    workspace(ctx).pause(text, resume_at)
    operator_event(ctx, "paused", reason=text, resume_at=resume_at)
    when = f" until {readable(resume_at)}" if resume_at else ""
    _say(as_json, f"paused{when}: {text}", paused=True, reason=text, resume_at=resume_at)


@click.command()
@json_option
@click.pass_context
def resume(ctx: click.Context, as_json: bool) -> None:
    """Allow claims again (removes state/interrupt-request.txt).

    \b
    Example:
      parallel-harness resume
    """
    if not workspace(ctx).resume():
        _say(as_json, "was not paused", resumed=False)
        return
    operator_event(ctx, "resumed", why="parallel-harness resume")
    _say(as_json, "resumed", resumed=True)


@click.command()
@click.argument("workers", type=click.IntRange(0, 256))
@json_option
@click.pass_context
def scale(ctx: click.Context, workers: int, as_json: bool) -> None:
    """Change the pool size of the running coordinator (writes state/desired-workers).

    Refused when no coordinator runs: the size belongs to a run (start one with
    ``run --agents N``, or set [run] agents in harness.toml).

    \b
    Example:
      parallel-harness scale 6
    """
    from harness.liveness.process import lock_is_held

    ws = workspace(ctx)
    if not lock_is_held(ws.coordinator_lock):
        usage_error(f"no coordinator is running in {ws.root}, so there is no pool to scale;"
                    f" start one with `parallel-harness run --agents {workers}`"
                    " (or set [run] agents in harness.toml)")
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    ws.desired_workers_file.write_text(f"{workers}\n")
    operator_event(ctx, "scaled", workers=workers)
    _say(as_json, f"desired workers: {workers} (the coordinator applies it within a tick)",
         workers=workers)
