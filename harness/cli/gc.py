"""``gc``: free what dead workers and old attempts left behind."""

from __future__ import annotations

from typing import Any

import click

from harness.cli.common import echo_json, usage_error, workspace
from harness.cli.render import size

def _tree_bytes(path) -> int:
    """Apparent size of everything under ``path`` (symlinks not followed)."""
    import os

    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _desired_workers(ws, cfg) -> int:
    """The pool size: ``scale``'s file while its coordinator runs, else [run] agents.

    A file left by a coordinator that is gone describes no pool (a new run
    removes it at start): it must not decide which worktrees go.
    """
    from harness.liveness.process import lock_is_held

    if lock_is_held(ws.coordinator_lock):
        try:
            return max(0, int(ws.desired_workers_file.read_text().strip()))
        except (FileNotFoundError, ValueError):
            pass
    return cfg.run.agents


class _Fence:
    """Hold a dead worker's lock while removing its leftovers, so it cannot restart meanwhile.

    In a dry run nothing is taken: ``alive`` is just the probe.
    """

    def __init__(self, path, dry_run: bool) -> None:
        self.path, self.dry_run, self.fd = path, dry_run, None

    def __enter__(self) -> bool:
        from harness.liveness.process import hold_lock, lock_is_held

        if self.dry_run:
            return not lock_is_held(self.path)
        self.fd = hold_lock(self.path)
        return self.fd is not None

    def __exit__(self, *exc: object) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)


def _gc_worktrees(ws, cfg, dry_run: bool) -> list[dict[str, Any]]:
    import re

    from harness.paths import UnsafePath, is_unsafe
    from harness.repo import worktrees

    out: list[dict[str, Any]] = []
    if not ws.worktrees_dir.is_dir():
        return out
    repo = (ws.root / cfg.git.repo).resolve()
    pool = _desired_workers(ws, cfg)
    for entry in sorted(ws.worktrees_dir.iterdir()):
        rel = str(entry.relative_to(ws.root))
        row: dict[str, Any] = {"kind": "worktree", "path": rel, "bytes": 0}
        out.append(row)
        m = re.fullmatch(r"w(\d+)", entry.name)
        unsafe = is_unsafe(ws.root, entry)
        if unsafe is not None:
            row.update(action="kept", reason=f"{unsafe}: not followed, not removed")
            continue
        if not entry.is_dir() or m is None:
            row.update(action="kept", reason="not a worker slot (w<N>)")
            continue
        if int(m[1]) <= pool:
            row.update(action="kept", reason=f"slot in the pool ({pool} worker(s))")
            continue
        with _Fence(ws.worker_lock(entry.name), dry_run) as free:
            if not free:
                row.update(action="kept", reason="worker alive (lock held)")
                continue
            try:
                if worktrees.has_unsaved_work(entry):
                    row.update(action="kept", reason="unsaved work")
                    continue
                size = _tree_bytes(entry)
                if not dry_run:
                    worktrees.remove_worktree(repo, entry, within=ws.root)
            except UnsafePath as exc:
                row.update(action="kept", reason=f"{exc.reason}: not followed, not removed")
                continue
            except worktrees.UnsavedWork:
                row.update(action="kept", reason="unsaved work")
                continue
            except worktrees.GitError as exc:
                row.update(action="kept", reason=f"git error: {exc}")
                continue
            row.update(action="would remove" if dry_run else "removed", bytes=size)
    return out


def _ids_in(ws, states: tuple[str, ...]) -> set[str]:
    from harness.queue import names

    ids = set()
    for state in states:
        try:
            entries = names.entries(ws.queue_dir / state)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            parsed = names.try_parse(entry)
            if parsed is not None:
                ids.add(parsed.id)
    return ids


def _ended_before(ws, state: str, cutoff: float) -> set[str]:
    """Ids in done/ or failed/ whose last attempt ended before ``cutoff`` (its result.json
    ``ended_at``, else the time the item entered the state: a rename sets the ctime)."""
    import os

    from harness.queue import names
    from harness.views.attempts import read_json

    out = set()
    try:
        entries = names.entries(ws.queue_dir / state)
    except FileNotFoundError:
        return out
    for entry in entries:
        parsed = names.try_parse(entry)
        if parsed is None:
            continue
        result = read_json(ws.attempt_dir(parsed.id, parsed.attempt) / "result.json") or {}
        ended = result.get("ended_at")
        if not isinstance(ended, (int, float)):
            try:
                ended = os.stat(ws.queue_dir / state / entry).st_ctime
            except FileNotFoundError:
                continue
        if ended < cutoff:
            out.add(parsed.id)
    return out


def _old_items(ws, days: float, include_failed: bool) -> set[str]:
    """Items that ended more than ``days`` ago, still-live ids left out."""
    import time

    cutoff = time.time() - days * 86400
    old = _ended_before(ws, "done", cutoff)
    if include_failed:
        old |= _ended_before(ws, "failed", cutoff)
    return old - _ids_in(ws, ("pending", "claimed", "waiting"))


def _gc_logs(ws, old: set[str], dry_run: bool) -> list[dict[str, Any]]:
    """logs/<id>/ of the old items, each checked for symlinks at the moment of use."""
    import shutil

    from harness.paths import is_unsafe

    out: list[dict[str, Any]] = []
    for item_id in sorted(old):
        item_dir = ws.logs_dir / item_id
        if not item_dir.is_dir():
            continue
        row: dict[str, Any] = {"kind": "logs", "path": str(item_dir.relative_to(ws.root)),
                               "bytes": 0}
        out.append(row)
        unsafe = is_unsafe(ws.root, item_dir)
        if unsafe is not None:
            row.update(action="kept", reason=unsafe)
            continue
        size = _tree_bytes(item_dir)
        if not dry_run:
            shutil.rmtree(item_dir, ignore_errors=True)
            if item_dir.exists():
                row.update(action="kept", reason="could not remove")
                continue
        row.update(action="would remove" if dry_run else "removed", bytes=size)
    return out


def _gc_branches(ws, cfg, old: set[str], dry_run: bool) -> list[dict[str, Any]]:
    """Attempt branches of the old items, and harness/<id> once the target contains it."""
    from harness.repo import retention, worktrees

    repo = (ws.root / cfg.git.repo).resolve()
    if not old or not (repo / ".git").exists():
        return []
    try:
        branches = retention.prunable(repo, cfg.git.target_branch, old)
        if not dry_run:
            retention.delete(repo, branches)
    except worktrees.GitError as exc:
        return [{"kind": "branch", "path": str(repo), "action": "kept", "bytes": 0,
                 "reason": f"git error: {exc}"}]
    verb = "would remove" if dry_run else "removed"
    return [{"kind": "branch", "path": b.branch, "action": verb, "bytes": 0, "reason": b.why}
            for b in branches]


def _agent_running(hb: dict[str, Any]) -> bool:
    import psutil

    pid, start = hb.get("agent_pid"), hb.get("agent_start")
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if start is not None and abs(proc.create_time() - float(start)) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


def _gc_heartbeats(ws, dry_run: bool) -> list[dict[str, Any]]:
    import os

    from harness.liveness import heartbeat
    from harness.queue import fsops

    out: list[dict[str, Any]] = []
    try:
        entries = sorted(os.listdir(ws.heartbeats_dir))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        worker = entry.removesuffix(".json")
        path = ws.heartbeats_dir / entry
        row: dict[str, Any] = {"kind": "heartbeat", "path": str(path.relative_to(ws.root)),
                               "bytes": 0}
        out.append(row)
        with _Fence(ws.worker_lock(worker), dry_run) as free:
            if not free:
                row.update(action="kept", reason="worker alive (lock held)")
                continue
            hb = heartbeat.read(path) or {}
            item = hb.get("item")
            # The coordinator recovers a dead worker's claim and kills its agent from this
            # file; leave it that job.
            if item and (ws.queue_dir / "claimed" / str(item)).exists():
                row.update(action="kept", reason=f"names claim {item} (the coordinator"
                                                 " recovers it)")
                continue
            if _agent_running(hb):
                row.update(action="kept", reason=f"its agent pid {hb['agent_pid']} still runs")
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                out.pop()
                continue
            if not dry_run and not fsops.unlink_quiet(path):
                out.pop()
                continue
            row.update(action="would remove" if dry_run else "removed", bytes=size)
    return out


@click.command()
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=None,
              metavar="DAYS", help="Prune items that ended longer ago than this"
              " (default: [retention] days, 30).")
@click.option("--logs-older-than", "days", type=click.FloatRange(min=0), hidden=True,
              help="The old name of --older-than.")
@click.option("--include-failed", is_flag=True, default=None,
              help="Prune failed items too (default: [retention] include_failed, false).")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc(ctx: click.Context, days: float | None, include_failed: bool | None, dry_run: bool,
       as_json: bool) -> None:
    """Free what dead workers and old items left behind.

    \b
    Removes:
      worktrees/w<N>     N above the pool size (state/desired-workers while a
                         coordinator runs, else [run] agents), worker lock free,
                         no unsaved work
      logs/<id>/         items in done/ that ended more than DAYS ago (failed/
                         too with --include-failed)
      branches           of those items: harness-attempts/<id>/*, and harness/<id>
                         once the target branch contains it
      heartbeats         of workers whose lock is free (unless they name a live
                         claim or a running agent: the coordinator needs those)
    Never removed: a worktree with uncommitted changes, untracked files or
    unreachable commits ("kept: unsaved work"); an unmerged harness/<id>;
    anything reached through a symbolic link.

    \b
    Example:
      parallel-harness gc --dry-run
      parallel-harness gc --older-than 7 --include-failed
    """
    from harness import config as config_mod

    ws = workspace(ctx)
    try:
        cfg = config_mod.load(ws.config_file)
    except config_mod.ConfigError as exc:
        usage_error(str(exc))
    old = _old_items(ws, cfg.retention.days if days is None else days,
                     cfg.retention.include_failed if include_failed is None else include_failed)
    rows = (_gc_worktrees(ws, cfg, dry_run) + _gc_logs(ws, old, dry_run)
            + _gc_branches(ws, cfg, old, dry_run) + _gc_heartbeats(ws, dry_run))
    freed = [r for r in rows if r["action"] != "kept"]
    total = sum(r["bytes"] for r in freed)
    if as_json:
        echo_json({"dry_run": dry_run, "entries": rows,
                   "freed": {"count": len(freed), "bytes": total}})
        return
    for r in rows:
        if r["action"] == "kept":
            if r["kind"] == "worktree" and r["reason"].startswith("slot in the pool"):
                continue  # the normal case; not worth a line
            click.echo(f"kept          {r['path']}: {r['reason']}")
        else:
            detail = r["reason"] if r["kind"] == "branch" else size(r["bytes"])
            click.echo(f"{r['action']:<13} {r['path']} ({detail})")
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {len(freed)} entr{'y' if len(freed) == 1 else 'ies'},"
               f" {total} bytes ({size(total)})")
