"""``logs``: print, or follow, an attempt's raw agent output."""

from __future__ import annotations

import sys

import click

from harness.cli.common import usage_error
from harness.cli.sessions import (POLL_INTERVAL, attempt_option, follow_end, last_lines,
                                  pick_attempts)


@click.command(short_help="Print (or follow) an attempt's raw agent output.")
@click.argument("item_id", metavar="ID")
@attempt_option
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing as the log grows, until the attempt's result.json appears.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show stderr.log instead.")
@click.option("-n", "--tail", "tail_lines", type=click.IntRange(min=1), default=None, metavar="N",
              help="Start with only the last N lines.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --follow: stop after this many seconds (exit 1 if not ended).")
@click.option("--interval", type=click.FloatRange(min=0.01), default=POLL_INTERVAL,
              metavar="SECONDS",
              show_default=True, help="With --follow: seconds between reads.")
@click.pass_context
def logs(ctx: click.Context, item_id: str, attempt: int | None, follow: bool, use_stderr: bool,
         tail_lines: int | None, timeout: float | None, interval: float) -> None:
    """Print an attempt's raw agent output: events.jsonl, or stdout.log for shell agents.

    \b
    Examples:
      parallel-harness logs fix-parser --follow
      parallel-harness logs fix-parser --attempt 1 --stderr -n 50
    """
    from harness.views import attempts

    _, ((n, d),) = pick_attempts(ctx, item_id, attempt, every=False)

    def pick(directory):
        if use_stderr:
            return directory / "stderr.log" if (directory / "stderr.log").is_file() else None
        return attempts.stream_file(directory)

    out = sys.stdout.buffer
    path = pick(d)
    if path is None and not follow:
        wanted = "stderr.log" if use_stderr else " or ".join(attempts.STREAM_FILES)
        usage_error(f"{item_id} attempt {n} has no {wanted} in {d}")
    if not follow:
        out.write(last_lines(path.read_bytes(), tail_lines))
        out.flush()
        return

    def emit(line: bytes) -> None:
        out.write(line + b"\n")
        out.flush()

    tail = None
    if tail_lines is not None and path is not None:  # start with the last N complete lines
        tail = attempts.Tail(path)
        for line in tail.read()[-tail_lines:]:
            out.write(line + b"\n")
        out.flush()
    how = attempts.follow(d, pick, emit, timeout=timeout, interval=interval, tail=tail)
    follow_end(how, item_id, n, timeout)

