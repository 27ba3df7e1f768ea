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


def _gc_logs(ws, older_than_days: float, dry_run: bool) -> list[dict[str, Any]]:
    import os
    import shutil
    import time

    from harness.paths import is_unsafe

    out: list[dict[str, Any]] = []
    if not ws.logs_dir.is_dir():
        return out
    terminal = _ids_in(ws, ("done", "failed"))
    live = _ids_in(ws, ("pending", "claimed", "waiting"))
    cutoff = time.time() - older_than_days * 86400
    for item_dir in sorted(ws.logs_dir.iterdir()):
        if not item_dir.is_dir() or item_dir.is_symlink():
            continue
        item_id = item_dir.name
        if item_id not in terminal or item_id in live:
            continue  # live, unknown or foreign: never pruned
        for attempt_dir in sorted(item_dir.iterdir()):
            if not attempt_dir.name.isdigit() or not attempt_dir.is_dir() \
                    or attempt_dir.is_symlink():
                continue
            try:
                stamp = (attempt_dir / "result.json").stat().st_mtime
            except OSError:
                try:
                    stamp = attempt_dir.stat().st_mtime
                except OSError:
                    continue
            if stamp >= cutoff:
                continue
            unsafe = is_unsafe(ws.root, attempt_dir)
            if unsafe is not None:
                out.append({"kind": "logs", "path": str(attempt_dir.relative_to(ws.root)),
                            "action": "kept", "reason": unsafe, "bytes": 0})
                continue
            size = _tree_bytes(attempt_dir)
            if not dry_run:
                shutil.rmtree(attempt_dir, ignore_errors=True)
                if attempt_dir.exists():
                    out.append({"kind": "logs", "path": str(attempt_dir.relative_to(ws.root)),
                                "action": "kept", "reason": "could not remove", "bytes": 0})
                    continue
            out.append({"kind": "logs", "path": str(attempt_dir.relative_to(ws.root)),
                        "action": "would remove" if dry_run else "removed", "bytes": size})
        if not dry_run:
            try:
                os.rmdir(item_dir)  # only succeeds once every attempt is gone
            except OSError:
                pass
    return out


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
@click.option("--logs-older-than", "older_than", type=click.FloatRange(min=0), default=30.0,
              show_default=True, metavar="DAYS",
              help="Prune attempt logs of done/failed items older than this many days.")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc(ctx: click.Context, older_than: float, dry_run: bool, as_json: bool) -> None:
    """Free what dead workers and old attempts left behind.

    \b
    Removes:
      worktrees/w<N>   N above the pool size (state/desired-workers while a
                       coordinator runs, else [run] agents), worker lock free,
                       no unsaved work
      logs/<id>/<n>    items in done/ or failed/ only, older than --logs-older-than
                       (mtime of result.json, else of the directory)
      heartbeats       of workers whose lock is free (unless they name a live
                       claim or a running agent: the coordinator needs those)
    A worktree with uncommitted changes, untracked files or unreachable
    commits is never removed ("kept: unsaved work").

    \b
    Example:
      parallel-harness gc --dry-run
      parallel-harness gc --logs-older-than 7
    """
    from harness import config as config_mod

    ws = workspace(ctx)
    try:
        cfg = config_mod.load(ws.config_file)
    except config_mod.ConfigError as exc:
        usage_error(str(exc))
    rows = (_gc_worktrees(ws, cfg, dry_run) + _gc_logs(ws, older_than, dry_run)
            + _gc_heartbeats(ws, dry_run))
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
            click.echo(f"{r['action']:<13} {r['path']} ({size(r['bytes'])})")
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {len(freed)} entr{'y' if len(freed) == 1 else 'ies'},"
               f" {total} bytes ({size(total)})")
