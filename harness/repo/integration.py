"""Where results go in git: branch names, and the coordinator's merge queue.

Each attempt works on its own branch ``harness-attempts/<id>/<n>``; the
accepted attempt (the one in done/) also ends on ``harness/<id>``. With
``integrate = "merge"`` the coordinator alone merges those branches into the
target branch, one at a time in completion order; the ref moves only by
compare-and-swap (harness.repo.merge). A merge that cannot be made sends the
item from done/ to failed/, keeps its branch and amends the attempt's
result.json to agree with the queue; the reason says why:

- ``conflict``: the branch conflicts with the target (the paths are listed);
- ``target_dirty``: the target is checked out in a worktree with uncommitted
  work, and moving it would pull the branch out from under that work;
- ``merge_failed``: anything else git refused (a missing branch, a broken repo).

After a merge, a clean checkout of the target (the operator's own, with
``repo = "."``) is brought to the new tip (harness.repo.checkout).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from harness.queue import fsops, names
from harness.queue.names import ItemName
from harness.queue.core import Queue


def attempt_branch(item_id: str, attempt: int) -> str:
    return f"harness-attempts/{item_id}/{attempt}"


def item_branch(item_id: str) -> str:
    return f"harness/{item_id}"


class MergeQueue:
    """Done items waiting to be merged into ``target``; ``step()`` drains it."""

    def __init__(self, repo: Path, target: str, queue: Queue, logs_dir: Path,
                 event: Callable[..., None]) -> None:
        self.repo, self.target, self.queue, self.event = repo, target, queue, event
        self.logs_dir = logs_dir
        self.pending: list[str] = []
        self._waiting_on: Path | None = None  # the lock last reported as live

    def add(self, item_id: str) -> None:
        self.pending.append(item_id)

    def __bool__(self) -> bool:
        return bool(self.pending)

    def load_unmerged(self) -> None:
        """After a restart: every done item not yet in the target, oldest completion first.

        A rename into done/ sets the file's ctime, so ctime order is completion order.
        """
        from harness.repo import merge

        done = []
        for entry in names.entries(self.queue.dir("done")):
            parsed = names.try_parse(entry)
            try:
                if parsed is None or merge.is_merged(self.repo, self.target,
                                                     item_branch(parsed.id)):
                    continue
                done.append((os.stat(self.queue.dir("done") / entry).st_ctime, parsed.id))
            except (merge.MergeError, FileNotFoundError):
                continue
        self.pending = [item_id for _, item_id in sorted(done)]

    def step(self) -> None:
        """Merge every pending item, in order; stop early if the target keeps moving."""
        from harness.repo import merge

        while self.pending:
            item_id = self.pending.pop(0)
            name = self.queue.find(item_id, ("done",))
            if name is None:
                continue
            try:
                result = merge.integrate(self.repo, self.target, item_branch(item_id),
                                         message=f"harness: merge {item_id}")
            except merge.MergeError as exc:
                if self._locked_out(item_id, exc):
                    return  # a git lock with a live owner: try again next tick
                if isinstance(exc, merge.MergeRaceError):
                    self.pending.insert(0, item_id)  # try again next tick
                    self.event("merge-race", item=item_id, error=str(exc))
                    return
                kind = "target_dirty" if isinstance(exc, merge.TargetDirty) else "merge_failed"
                reason = f"{kind}: {exc}; branch {item_branch(item_id)} kept"
                self.queue.reject(name, reason)
                self._amend_result(item_id, name.attempt, kind, reason)
                self.event("merge-failed", item=item_id, reason=kind, error=str(exc))
                continue
            self._record(item_id, name, result)

    def _locked_out(self, item_id: str, exc: Exception) -> bool:
        """True if git failed on a lock file: the item goes back to the head of the queue.

        A stale lock (repo.locks) is removed at once; a live one is reported once and
        waited for. Neither is the item's fault, so neither fails it.
        """
        from harness.repo import locks, worktrees

        lock = locks.lock_in(getattr(exc, "stderr", "") or str(exc))
        if lock is None:
            return False
        self.pending.insert(0, item_id)
        if locks.remove_if_stale(lock, worktrees.common_dir(self.repo)):
            self.event("stale-lock-removed", lock=str(lock), item=item_id)
        elif self._waiting_on != lock:
            self.event("merge-waiting", item=item_id, lock=str(lock),
                       why="a running git holds this lock; retrying every tick")
        self._waiting_on = lock
        return True

    def _record(self, item_id: str, name: Any, result: Any) -> None:
        if result.status == "conflict":
            paths = ", ".join(result.conflicts) or "(unknown paths)"
            reason = (f"conflict: {item_branch(item_id)} conflicts with {self.target} in"
                      f" {paths}; branch {item_branch(item_id)} kept")
            self.queue.reject(name, reason)
            self._amend_result(item_id, name.attempt, "conflict", reason)
            self.event("merge-conflict", item=item_id, paths=list(result.conflicts))
            return
        self.event("merged", item=item_id, status=result.status, sha=result.target_sha)
        if result.status == "merged":
            self._follow_checkouts(result.previous_sha, result.target_sha)

    def _follow_checkouts(self, old: str, new: str) -> None:
        from harness.repo import checkout, merge

        try:
            followed = checkout.follow(self.repo, self.target, old, new)
        except merge.MergeError as exc:
            self.event("checkout-behind", checkout=str(self.repo), why=str(exc))
            return
        for f in followed:
            if f.updated:
                self.event("checkout-updated", checkout=str(f.path), sha=new)
            else:
                self.event("checkout-behind", checkout=str(f.path), why=f.why)

    def _amend_result(self, item_id: str, attempt: int, kind: str, detail: str) -> None:
        """The attempt succeeded but its result could not be integrated: say so in result.json,
        with the same reason the queue's failed/ reason file gives."""
        path = self.logs_dir / item_id / str(attempt) / "result.json"
        try:
            result = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        result.update(reason=kind, detail=detail, queue="failed")
        fsops.write_atomic(path, orjson.dumps(result, option=orjson.OPT_INDENT_2),
                           tmp_dir=path.parent, durable=False)


def missing_results(repo: Path, queue: Queue) -> list[tuple[ItemName, bool]]:
    """Done items without their ``harness/<id>`` branch, each with whether the accepted
    attempt's own branch is there to restore it from. Raises GitError if git cannot
    list the branches."""
    from harness.repo import worktrees

    have = set(worktrees.list_branches(repo, ("harness/", "harness-attempts/")))
    out = []
    for entry in names.entries(queue.dir("done")):
        parsed = names.try_parse(entry)
        if parsed is not None and item_branch(parsed.id) not in have:
            out.append((parsed, attempt_branch(parsed.id, parsed.attempt) in have))
    return out


def reconcile_branches(repo: Path, queue: Queue, event: Callable[..., None]) -> None:
    """Give every done item its ``harness/<id>`` branch from its accepted attempt's branch
    (a workspace of an older version could complete before setting it).

    Each outcome is an event: ``branch-reconciled`` only when git set the branch,
    ``branch-reconcile-failed`` with git's message, ``result-missing`` when neither
    branch exists (``fsck`` reports those too).
    """
    from harness.repo import worktrees

    on_lock = lambda lock: event("stale-lock-removed", lock=str(lock))  # noqa: E731
    try:
        missing = missing_results(repo, queue)
    except worktrees.GitError as exc:
        event("branch-reconcile-failed", error=str(exc))
        return
    for name, restorable in missing:
        if not restorable:
            event("result-missing", item=name.id, attempt=name.attempt,
                  why=f"neither {item_branch(name.id)} nor"
                      f" {attempt_branch(name.id, name.attempt)} exists in {repo}")
            continue
        try:
            sha = worktrees.branch_head(repo, attempt_branch(name.id, name.attempt))
            worktrees.accept(repo, item_branch(name.id), sha or "", on_stale_lock=on_lock)
        except worktrees.GitError as exc:
            event("branch-reconcile-failed", item=name.id, error=str(exc))
            continue
        event("branch-reconciled", item=name.id, attempt=name.attempt)
