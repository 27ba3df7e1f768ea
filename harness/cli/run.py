"""``run``: start the coordinator and its workers, show what happens, then a summary.

On a terminal a live progress line (rich) stays at the bottom while event
lines scroll above it; elsewhere (a pipe, a log, CI) a plain line per event;
with ``--quiet`` nothing, with ``--json`` only the summary as JSON.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from harness.cli.common import EXIT_HARNESS, EXIT_USAGE, workspace


@click.command()
@click.option("--agents", type=click.IntRange(0, 256), default=None,
              help="Number of workers (default: [run] agents in harness.toml).")
@click.option("--forever", is_flag=True, help="Keep polling for new items instead of exiting.")
@click.option("--stale-after", type=float, default=None, help="Override [run] stale_after.")
@click.option("--tick", type=float, default=None, help="Override [run] tick.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors; the exit code tells.")
@click.option("--json", "as_json", is_flag=True,
              help="Print only this run's summary, as JSON, when it ends.")
@click.pass_context
def run(ctx: click.Context, agents: int | None, forever: bool, stale_after: float | None = None,
        tick: float | None = None, quiet: bool = False, as_json: bool = False) -> None:
    """Run the coordinator and N workers until the queue is drained.

    Exit code 0 if every item of the run ended in done/, 1 if any ended in
    failed/ (or the run budget stopped it), 2 for usage or configuration
    errors, 128+N when stopped by signal N.

    \b
    Example:
      parallel-harness run --agents 4
    """
    overrides = {"run": {"agents": agents, "stale_after": stale_after, "tick": tick}}
    mode = "json" if as_json else "quiet" if quiet else "tty" if sys.stdout.isatty() else "plain"
    sys.exit(run_pool(workspace(ctx), overrides, forever=forever, mode=mode))


def run_pool(ws: Any, overrides: dict[str, dict[str, Any]], *, forever: bool,
             mode: str = "plain") -> int:
    """Load the config, check it, start and supervise, print the summary; the exit code.

    ``mode``: "tty" (live line), "plain" (a line per event), "quiet", "json".
    """
    from harness import config as config_mod
    from harness.agents.prompts import PromptError
    from harness.pool import preflight
    from harness.pool.coordinator import Coordinator, CoordinatorError
    from harness.queue.fsops import UnsupportedFilesystem

    try:
        cfg = config_mod.load(ws.config_file, overrides)
        _refuse_empty_pool(cfg, forever)
        preflight.check(ws, cfg)
        coordinator = Coordinator(ws, cfg, forever=forever, on_fault=_report_fault)
        coordinator.start()
    except (config_mod.ConfigError, CoordinatorError, preflight.PreflightError,
            UnsupportedFilesystem, PromptError) as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    with _screen(ws, mode) as echo:
        coordinator.on_event = _event_printer(echo) if mode in ("tty", "plain") else None
        if mode in ("tty", "plain"):
            for line in _opening(ws, cfg, coordinator, forever):
                echo(line)
        try:
            code = coordinator.run()
        except Exception:  # noqa: BLE001 -- say it plainly, keep the traceback
            click.echo(traceback.format_exc(), err=True)
            click.echo("error: the coordinator stopped on the internal error above; its workers"
                       " finish their current items on their own and nothing is lost;"
                       " `parallel-harness run` starts it again", err=True)
            return EXIT_HARNESS
    _closing(ws, coordinator, mode)
    return code


def _report_fault(text: str) -> None:
    """A fault of the machine, on stderr as it happens (it may not reach the event log)."""
    click.echo(f"parallel-harness: {text}", err=True)


def _refuse_empty_pool(cfg: Any, forever: bool) -> None:
    """A batch run with no worker would wait forever: refused, naming the setting."""
    from harness.pool.preflight import PreflightError

    if cfg.run.agents == 0 and not forever:
        where = cfg._origins.get("run.agents", cfg._origins.get("", "harness.toml"))
        raise PreflightError(
            f"0 workers ([run] agents = 0, from {where}): nothing would ever be claimed;"
            " run with --agents N (N >= 1), or with --forever and `parallel-harness scale N`"
            " later")


def _opening(ws: Any, cfg: Any, coordinator: Any, forever: bool) -> list[str]:
    lines = [f"parallel-harness: {coordinator.desired_workers()} worker(s) in {ws.root}"
             f" ({'forever' if forever else 'until the queue is drained'}); Ctrl-C stops"]
    if coordinator.desired_workers() == 0:
        lines.append("0 workers: nothing is claimed until `parallel-harness scale N`")
    counts = coordinator.queue.counts()
    if not forever and not (counts["pending"] or counts["claimed"] or counts["waiting"]):
        lines.append("nothing to run: no item is pending, claimed or waiting"
                     " (`parallel-harness enqueue` adds some)")
    lines += _checkout_notes(coordinator.repo, cfg)
    return lines


def _checkout_notes(repo: Any, cfg: Any) -> list[str]:
    """Say before the run that merges move a branch someone has checked out."""
    if cfg.git.integrate != "merge":
        return []
    from harness.repo.merge import MergeError, worktrees_on

    try:
        checkouts = worktrees_on(repo, f"refs/heads/{cfg.git.target_branch}")
    except MergeError:
        return []
    return [f"note: {cfg.git.target_branch} is checked out in {wt}: each merge fast-forwards"
            " it there while it is clean; with uncommitted changes there, merges are refused"
            " (reason target_dirty) until you commit or stash them" for wt in checkouts]


def _event_printer(echo: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    from harness.cli.render import render_event

    def show(ev: dict[str, Any]) -> None:
        line = render_event(ev)
        if line is not None:
            echo(line)

    return show


@contextmanager
def _screen(ws: Any, mode: str) -> Iterator[Callable[[str], None]]:
    """An ``echo`` for event lines; on a terminal, a live progress line under them.

    The line is redrawn by rich's refresh thread from state/run.json, which
    the coordinator rewrites every tick; it is removed when the run ends, so
    the summary follows the last event line.
    """
    if mode != "tty":
        yield click.echo
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(_Progress(ws), console=console, refresh_per_second=4, transient=True) as live:
        yield lambda line: live.console.print(line, markup=False, highlight=False,
                                              soft_wrap=True)


class _Progress:
    """A rich renderable: the progress line, read afresh at every refresh."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def __rich__(self) -> Any:
        from rich.text import Text

        from harness.cli.render import run_progress
        from harness.liveness import heartbeat

        return Text(run_progress(heartbeat.read(self.ws.run_file)), style="bold",
                    no_wrap=True, overflow="ellipsis")


def _closing(ws: Any, coordinator: Any, mode: str) -> None:
    from harness.cli.common import echo_json
    from harness.cli.render import render_run_summary

    report = coordinator.run_report()
    if coordinator.budget_hit and mode != "json":
        click.echo(f"parallel-harness: stopped: {coordinator.budget_hit}", err=True)
    if coordinator.undelivered and mode != "json":
        from harness.repo.remote import redact

        click.echo(f"parallel-harness: {coordinator.undelivered} done item(s) not delivered:"
                   f" the remote {redact(coordinator.cfg.git.remote)!r} did not answer for"
                   f" {coordinator.cfg.git.remote_wait:g}s; they stay in done/ and the next"
                   " `parallel-harness run` delivers them", err=True)
    if mode == "json":
        echo_json({**report, "root": str(ws.root), "budget_hit": coordinator.budget_hit,
                   "undelivered": coordinator.undelivered})
    elif mode != "quiet":
        click.echo(render_run_summary(report, str(ws.root)))
