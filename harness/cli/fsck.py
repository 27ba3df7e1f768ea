"""``fsck``: check the queue invariants; ``--repair`` runs recovery."""

from __future__ import annotations

import sys
from typing import Any

import click

from harness.cli.common import EXIT_FAILURES, echo_json, open_queue, usage_error, workspace


@click.command()
@click.option("--repair", is_flag=True, help="Run recovery first and report what it changed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def fsck(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Check the queue invariants; exit 1 if any is violated.

    --repair runs recovery (refused while a coordinator runs) and returns
    every claim to pending/.

    \b
    Example:
      parallel-harness fsck --repair
    """
    from filelock import FileLock, Timeout

    from harness.queue.invariants import check, junk_count
    from harness.queue.recovery import recover

    ws = workspace(ctx)
    queue = open_queue(ctx)
    repaired: list[str] = []
    queue.on_junk = repaired.append
    if repair:
        ws.state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(ws.coordinator_lock))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            usage_error("a coordinator is running; stop it before `fsck --repair`")
        try:
            _refuse_live_workers(ws)
            repaired += recover(queue, revoke_claims=True)
        finally:
            lock.release()
    violations = check(ws.queue_dir)
    junk = junk_count(ws.queue_dir)
    if as_json:
        echo_json({"repaired": repaired, "violations": [vars(v) for v in violations],
                   "junk": junk})
    else:
        for line in repaired:
            click.echo(f"repaired   {line}")
        for v in violations:
            click.echo(f"VIOLATION  {v}")
        click.echo(f"{len(violations)} violation(s), {junk} junk in {ws.queue_dir / 'junk'}"
                   " (moved aside; each has a .reason file)")
    sys.exit(EXIT_FAILURES if violations else 0)


def _refuse_live_workers(ws: Any) -> None:
    from harness.liveness.process import lock_is_held

    live = sorted(p.stem for p in ws.locks_dir.glob("*.lock") if lock_is_held(p))
    if live:
        usage_error(f"worker(s) {', '.join(live)} still running (their coordinator is gone,"
                    " they finish their items); wait or stop them before `fsck --repair`")
