"""Where results go in git: branch names, and the coordinator's integration queue.

Each attempt works on its own branch ``harness-attempts/<id>/<n>``; the
accepted attempt (the one in done/) also ends on ``harness/<id>``. With
``[git] integrate`` other than "none", the coordinator alone integrates done
items, one at a time in completion order (:class:`IntegrationQueue`), each by
its mode:

- ``merge`` (:class:`LocalMerge`): into the local target branch, which moves
  only by compare-and-swap (harness.repo.merge); a clean checkout of the
  target (the operator's own, with ``repo = "."``) follows (harness.repo.checkout);
- ``push``, ``merge-push``, ``pr``: to a git remote (harness.repo.publish).

An item that cannot be integrated goes from done/ to failed/, keeps its
branch, and its attempt's result.json is amended to agree with the queue; the
reason says why: ``conflict`` (the paths listed), ``target_dirty`` (the
target is checked out with uncommitted work), ``merge_failed``,
``push_rejected``, ``verify_failed`` (the merge with a moved target failed
verify), ``pr_failed``. A git lock with a live owner, a target that keeps
moving and an unreachable remote are nobody's fault: the item waits (an
unreachable remote pauses the pool until it answers again).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from harness.queue import fsops, names
from harness.queue.names import ItemName
from harness.queue.core import Queue
from harness.workspace import Workspace

REMOTE_RETRY = 10.0  # seconds between probes of an unreachable remote
AUTO_RESUME = "auto-resume: remote"  # marks a pause the integration queue made


def attempt_branch(item_id: str, attempt: int) -> str:
    return f"harness-attempts/{item_id}/{attempt}"


def item_branch(item_id: str) -> str:
    return f"harness/{item_id}"


@dataclass(frozen=True)
class Outcome:
    """What one integration step did with one item.

    ``integrated``: the destination has it (``event`` names what happened);
    ``failed``: it cannot be integrated (``reason`` is its terminal reason);
    ``retry``: not now, not its fault (a live git lock, a racing target);
    ``unreachable``: the remote does not answer.
    """

    status: Literal["integrated", "failed", "retry", "unreachable"]
    reason: str = ""
    detail: str = ""
    event: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # added to result.json


class Mode(Protocol):
    name: str

    def integrated(self, item_id: str) -> bool:
        """The destination already holds the item's result (after a restart)."""

    def integrate(self, item_id: str) -> Outcome: ...


class IntegrationQueue:
    """Done items waiting to be integrated; ``step()`` drains it in completion order."""

    def __init__(self, mode: Mode, ws: Workspace, queue: Queue, event: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mode, self.ws, self.queue, self.event, self.clock = mode, ws, queue, event, clock
        self.pending: list[str] = []
        self.retries = 0  # pushes and merges tried again because the target moved
        self.unreachable_since: float | None = None
        self._next_probe = 0.0

    def add(self, item_id: str) -> None:
        self.pending.append(item_id)

    def __bool__(self) -> bool:
        return bool(self.pending)

    def load_pending(self) -> None:
        """After a restart: every done item its destination lacks, oldest completion first
        (a rename into done/ sets the ctime, so ctime order is completion order)."""
        done = []
        for entry in names.entries(self.queue.dir("done")):
            parsed = names.try_parse(entry)
            if parsed is None:
                continue
            try:
                if self.mode.integrated(parsed.id):
                    continue
            except Exception:  # noqa: BLE001 -- cannot tell (git failed): integrating says why
                pass
            try:
                done.append((os.stat(self.queue.dir("done") / entry).st_ctime, parsed.id))
            except FileNotFoundError:
                continue
        self.pending = [item_id for _, item_id in sorted(done)]
        if self.pending:
            self.event("integration-order", mode=self.mode.name, items=self.pending)

    def step(self) -> None:
        """Integrate pending items in order until one has to wait."""
        if self.unreachable_since is not None and self.clock() < self._next_probe:
            return
        while self.pending:
            item_id = self.pending[0]
            name = self.queue.find(item_id, ("done",))
            if name is None:
                self.pending.pop(0)
                continue
            outcome = self.mode.integrate(item_id)
            self.retries += int(outcome.fields.get("retries") or 0)
            if outcome.status == "unreachable":
                self._unreachable(outcome)
                return
            self._reachable()
            if outcome.status == "retry":
                return
            self.pending.pop(0)
            self._record(name, outcome)

    def _record(self, name: ItemName, outcome: Outcome) -> None:
        if outcome.status == "failed":
            reason = f"{outcome.reason}: {outcome.detail}"
            self.queue.reject(name, reason)
            self._amend_result(name, {"reason": outcome.reason, "detail": reason,
                                      "queue": "failed", **outcome.result})
        elif outcome.result:
            self._amend_result(name, outcome.result)
        if outcome.event:
            self.event(outcome.event, item=name.id, **outcome.fields)

    def _unreachable(self, outcome: Outcome) -> None:
        """Pause the pool (its results could not be delivered) and probe again later."""
        self._next_probe = self.clock() + REMOTE_RETRY
        if self.unreachable_since is not None:
            return
        self.unreachable_since = self.clock()
        if self.ws.interrupt_reason() is None:
            self.ws.pause(f"integration paused: {outcome.detail}; running items finish, no new"
                          f" ones start; the harness tries the remote every {REMOTE_RETRY:g}s"
                          f" and resumes by itself\n{AUTO_RESUME}")
        self.event("remote-unreachable", error=outcome.detail, waiting=len(self.pending))

    def _reachable(self) -> None:
        if self.unreachable_since is None:
            return
        seconds = round(self.clock() - self.unreachable_since, 1)
        self.unreachable_since = None
        if AUTO_RESUME in (self.ws.interrupt_reason() or ""):
            self.ws.resume()
        self.event("remote-reachable", seconds=seconds)

    def _amend_result(self, name: ItemName, fields: dict[str, Any]) -> None:
        """Say in the accepted attempt's result.json what integration did (the queue and the
        file must agree)."""
        path = self.ws.attempt_dir(name.id, name.attempt) / "result.json"
        try:
            result = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        result.update(fields)
        fsops.write_atomic(path, orjson.dumps(result, option=orjson.OPT_INDENT_2),
                           tmp_dir=path.parent, durable=False)


def git_lock_outcome(repo: Path, exc: Exception, event: Callable[..., None],
                     item_id: str) -> Outcome | None:
    """A ``retry`` if git failed on a lock file (a stale one is removed at once), else None."""
    from harness.repo import locks, worktrees

    lock = locks.lock_in(getattr(exc, "stderr", "") or str(exc))
    if lock is None:
        return None
    if locks.remove_if_stale(lock, worktrees.common_dir(repo)):
        event("stale-lock-removed", lock=str(lock), item=item_id)
        return Outcome("retry", detail=f"removed stale {lock}")
    return Outcome("retry", detail=f"{lock} is held by a running git", event="merge-waiting",
                   fields={"lock": str(lock)})


class LocalMerge:
    """``integrate = "merge"``: into the local target branch, by compare-and-swap."""

    name = "merge"

    def __init__(self, repo: Path, target: str, event: Callable[..., None]) -> None:
        self.repo, self.target, self.event = repo, target, event
        self._waiting_on: str | None = None

    def integrated(self, item_id: str) -> bool:
        from harness.repo import merge

        return merge.is_merged(self.repo, self.target, item_branch(item_id))

    def integrate(self, item_id: str) -> Outcome:
        from harness.repo import merge

        try:
            result = merge.integrate(self.repo, self.target, item_branch(item_id),
                                     message=f"harness: merge {item_id}")
        except merge.MergeError as exc:
            locked = git_lock_outcome(self.repo, exc, self.event, item_id)
            if locked is not None:
                return self._waiting(item_id, locked)
            if isinstance(exc, merge.MergeRaceError):
                self.event("merge-race", item=item_id, error=str(exc))
                return Outcome("retry", detail=str(exc))
            kind = "target_dirty" if isinstance(exc, merge.TargetDirty) else "merge_failed"
            return Outcome("failed", kind, f"{exc}; branch {item_branch(item_id)} kept",
                           event="merge-failed", fields={"reason": kind, "error": str(exc)})
        if result.status == "conflict":
            paths = ", ".join(result.conflicts) or "(unknown paths)"
            return Outcome("failed", "conflict",
                           f"{item_branch(item_id)} conflicts with {self.target} in {paths};"
                           f" branch {item_branch(item_id)} kept", event="merge-conflict",
                           fields={"paths": list(result.conflicts)})
        if result.status == "merged":
            follow_checkouts(self.repo, self.target, result.previous_sha, result.target_sha,
                             self.event)
        return Outcome("integrated", event="merged", fields={
            "status": result.status, "sha": result.target_sha, "retries": result.races})

    def _waiting(self, item_id: str, locked: Outcome) -> Outcome:
        """Report a live lock once, not every tick."""
        if locked.event and self._waiting_on != locked.fields.get("lock"):
            self.event(locked.event, item=item_id, **locked.fields,
                       why="a running git holds this lock; retrying every tick")
        self._waiting_on = locked.fields.get("lock")
        return Outcome("retry", detail=locked.detail)


def follow_checkouts(repo: Path, target: str, old: str, new: str,
                     event: Callable[..., None]) -> None:
    """Bring clean checkouts of ``target`` from ``old`` to ``new`` (harness.repo.checkout)."""
    from harness.repo import checkout, merge

    try:
        followed = checkout.follow(repo, target, old, new)
    except merge.MergeError as exc:
        event("checkout-behind", checkout=str(repo), why=str(exc))
        return
    for f in followed:
        if f.updated:
            event("checkout-updated", checkout=str(f.path), sha=new)
        else:
            event("checkout-behind", checkout=str(f.path), why=f.why)


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
