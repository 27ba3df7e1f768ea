"""``fsck``: check the queue invariants; ``--repair`` runs recovery."""

from __future__ import annotations

import sys
from typing import Any

import click

from harness.cli.common import (EXIT_FAILURES, echo_json, load_config, open_queue, usage_error,
                                workspace)


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
            repaired += _repair_branches(ctx, queue)
        finally:
            lock.release()
    violations = check(ws.queue_dir) + _results_missing_from_git(ctx, queue)
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


def _repo(ctx: click.Context) -> Any:
    repo = (workspace(ctx).root / load_config(ctx).git.repo).resolve()
    return repo if (repo / ".git").exists() else None


def _repair_branches(ctx: click.Context, queue: Any) -> list[str]:
    """Give done items their harness/<id> branch back from the accepted attempt's branch."""
    from harness.repo.integration import reconcile_branches

    repo, lines = _repo(ctx), []
    if repo is not None:
        reconcile_branches(repo, queue, lambda kind, **f: lines.append(
            f"{kind}: " + ", ".join(f"{k} {v}" for k, v in f.items())))
    return lines


def _results_missing_from_git(ctx: click.Context, queue: Any) -> list[Any]:
    """A violation per done item whose branch is not in git (nothing to integrate)."""
    from harness.queue.invariants import Violation
    from harness.repo import worktrees
    from harness.repo.integration import attempt_branch, item_branch, missing_results

    repo = _repo(ctx)
    if repo is None:
        return []
    try:
        missing = missing_results(repo, queue)
    except worktrees.GitError as exc:
        return [Violation("git", str(repo), f"cannot list branches: {exc}")]
    return [Violation("result-missing", name.id,
                      f"in done/ but {item_branch(name.id)} is not in {repo}; " +
                      (f"{attempt_branch(name.id, name.attempt)} is: `fsck --repair` restores"
                       " it" if restorable else "its attempt branch is gone too"))
            for name, restorable in missing]


def _refuse_live_workers(ws: Any) -> None:
    from harness.liveness.process import lock_is_held

    live = sorted(p.stem for p in ws.locks_dir.glob("*.lock") if lock_is_held(p))
    if live:
        usage_error(f"worker(s) {', '.join(live)} still running (their coordinator is gone,"
                    " they finish their items); wait or stop them before `fsck --repair`")
