"""Crash a real process at every failpoint; recover() must leave a consistent queue.

For each point in ``harness.failpoints.REGISTRY`` and each action (``kill``:
SIGKILL, no cleanup; ``stop``: SIGSTOP, a zombie we then SIGKILL), a child
process (tests/procs.py ``op``) runs the queue operation that reaches the
point with ``HARNESS_FAILPOINTS`` armed. The parent waits until the child is
dead or stopped, runs ``recover(revoke_claims=True)``, and checks: no
invariant violation, the target item in exactly the expected state, the
background items untouched, recovery idempotent, and everything drains to
done/ or failed/.

SCENARIOS maps every failpoint to its scenario; a failpoint added to the
queue without one fails ``test_every_failpoint_has_a_scenario``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import harness.queue.core  # noqa: F401  (defines the failpoints)
from harness.queue import names
from harness.queue.failpoints import REGISTRY
from harness.queue.invariants import check
from harness.queue.core import Queue
from harness.queue.recovery import recover
from tests.procs import EXIT_OK, EXIT_OSERROR, Procs, wait_stopped

pytestmark = pytest.mark.timeout(60)

TARGET = "target"
BACKGROUND = {"bg-done": "done", "bg-failed": "failed", "bg-pending": "pending",
              "bg-waiting": "waiting"}
CHILD_TIMEOUT = 30.0


@dataclass(frozen=True)
class Scenario:
    """``setup`` prepares the queue and returns the child's op arguments;
    ``expect`` is the target's (state, attempt) after a crash at the point
    and ``recover(revoke_claims=True)``."""

    setup: Callable[[Queue], dict[str, Any]]
    expect: tuple[str, int] | None  # None: the target was never enqueued (rolled back)


def enqueue_target(q: Queue) -> dict[str, Any]:
    return {"op": "enqueue", "id": TARGET, "priority": 0}


def bulk_target(atomic: bool) -> Callable[[Queue], dict[str, Any]]:
    def setup(q: Queue) -> dict[str, Any]:
        return {"op": "bulk", "id": TARGET, "priority": 0, "atomic": atomic}
    return setup


def pending_target(op: str) -> Callable[[Queue], dict[str, Any]]:
    def setup(q: Queue) -> dict[str, Any]:
        q.enqueue({"id": TARGET, "priority": 0})
        return {"op": op}
    return setup


def claimed_by_parent(q: Queue) -> dict[str, Any]:
    """The parent claims the target (a dead claimant); the child revokes it."""
    q.enqueue({"id": TARGET, "priority": 0})
    claim = q.claim()
    assert claim is not None and claim.id == TARGET
    return {"op": "revoke", "name": str(claim.name)}


def due_retry(q: Queue) -> dict[str, Any]:
    """The target failed attempt 1 with zero backoff: waiting/, due now; the child promotes."""
    q.enqueue({"id": TARGET, "priority": 0})
    claim = Queue(q.root, backoff_base=0.0).claim()
    assert claim is not None and claim.id == TARGET
    assert claim.fail("first attempt failed") == "retry"
    return {"op": "promote"}


SCENARIOS: dict[str, Scenario] = {
    "enqueue.after-stage": Scenario(enqueue_target, ("pending", 1)),
    "enqueue.after-reserve": Scenario(enqueue_target, ("pending", 1)),
    "enqueue.after-publish": Scenario(enqueue_target, ("pending", 1)),
    "bulk.after-reserve": Scenario(bulk_target(False), ("pending", 1)),
    "bulk.after-publish": Scenario(bulk_target(False), ("pending", 1)),
    "bulk.before-commit": Scenario(bulk_target(True), None),
    "bulk.after-commit": Scenario(bulk_target(True), ("pending", 1)),
    "claim.after-rename": Scenario(pending_target("claim"), ("pending", 2)),
    "claim.after-record": Scenario(pending_target("claim"), ("pending", 2)),
    "complete.before-rename": Scenario(pending_target("complete"), ("pending", 2)),
    "complete.after-rename": Scenario(pending_target("complete"), ("done", 1)),
    "fail.before-rename": Scenario(pending_target("fail"), ("pending", 2)),
    "fail.after-rename": Scenario(pending_target("fail"), ("failed", 1)),
    "revoke.after-rename": Scenario(claimed_by_parent, ("pending", 2)),
    "promote.before-rename": Scenario(due_retry, ("waiting", 2)),
}


def make_background(q: Queue) -> list[str]:
    """Items in every state that no scenario may disturb; the target sorts first (prio 0)."""
    q.enqueue({"id": "bg-done"})
    claim = q.claim()
    assert claim is not None and claim.id == "bg-done"
    claim.complete()
    q.enqueue({"id": "bg-failed"})
    claim = q.claim()
    assert claim is not None and claim.id == "bg-failed"
    assert claim.fail("background failure", retry=False) == "failed"
    q.enqueue({"id": "bg-pending", "priority": 9})
    q.enqueue({"id": "bg-waiting", "priority": 9, "depends_on": ["bg-pending"]})
    return list(BACKGROUND)


def places(root: Path) -> dict[str, list[tuple[str, int]]]:
    """id -> [(state, attempt)] over all five states."""
    out: dict[str, list[tuple[str, int]]] = {}
    for state in names.STATES:
        for entry in names.entries(root / state):
            parsed = names.parse(entry)
            out.setdefault(parsed.id, []).append((state, parsed.attempt))
    return out


def assert_consistent(q: Queue, ids: list[str], expect: tuple[str, int] | None) -> None:
    assert check(q.root, enqueued=ids) == []
    where = places(q.root)
    got = where.get(TARGET)
    assert got == (None if expect is None else [expect]), f"target is at {got}, expected {expect}"
    for item_id, state in BACKGROUND.items():
        assert [s for s, _ in where[item_id]] == [state], f"{item_id} disturbed: {where[item_id]}"
    assert set(where) == set(ids), "an item was lost or appeared"
    assert recover(q, revoke_claims=True) == [], "recover() is not idempotent"


def drain(q: Queue) -> None:
    """Finish everything: promote regardless of due times, claim and complete."""
    for _ in range(100):
        q.promote(now=time.time() + 1e6)
        claim = q.claim()
        if claim is None:
            if not names.entries(q.dir("waiting")):
                return
            continue
        claim.complete()
    raise AssertionError(f"queue did not drain: {q.counts()}")


def run_to_failpoint(procs: Procs, q: Queue, point: str, action: str,
                     args: dict[str, Any]) -> None:
    """Run the child with ``point`` armed; return once it is dead (kill) or stopped and killed."""
    child = procs.spawn("op", {"root": str(q.root), **args}, failpoints=f"{point}={action}",
                        label=f"{point}-{action}")
    if action.startswith("kill"):
        code = procs.wait(child, CHILD_TIMEOUT)
        assert code == -signal.SIGKILL, (
            f"child did not die at {point} (exit {code}):\n{procs.log(child)}")
    else:
        wait_stopped(child, CHILD_TIMEOUT)
        procs.kill(child)
        assert child.returncode == -signal.SIGKILL


# Failpoints outside the queue protocol, and the test that drives each.
KILLED_MID_PUSH = ("test_remote.py::test_a_coordinator_killed_mid_push_delivers_each_item"
                   "_exactly_once_after_restart")
ELSEWHERE = {
    "agent.spawned": "test_edges.py::test_an_agent_cannot_start_before_its_worker_recorded_it",
    "reuse.branch-created": "test_reuse.py::test_a_worker_killed_between_branch_and_head_loses"
                            "_nothing",
    "fetch.after": KILLED_MID_PUSH, "push.before": KILLED_MID_PUSH, "push.after": KILLED_MID_PUSH}


def test_every_failpoint_has_a_scenario():
    import harness.agents.runner  # noqa: F401  (defines agent.spawned)
    import harness.repo.remote  # noqa: F401  (defines fetch.after, push.before, push.after)
    import harness.repo.reuse  # noqa: F401  (defines reuse.branch-created)

    assert REGISTRY, "no failpoints registered: is harness.queue imported?"
    covered = set(SCENARIOS) | set(ELSEWHERE)
    assert covered == set(REGISTRY), (
        f"failpoints without a scenario: {sorted(set(REGISTRY) - covered)};"
        f" scenarios for no failpoint: {sorted(covered - set(REGISTRY))}")


@pytest.mark.parametrize("action", ["kill", "stop"])
@pytest.mark.parametrize("point", sorted(SCENARIOS))
def test_crash_at_failpoint_then_recover(point, action, tmp_path, procs):
    scenario = SCENARIOS[point]
    q = Queue(tmp_path / "queue")
    ids = [*make_background(q), TARGET]
    args = scenario.setup(q)

    run_to_failpoint(procs, q, point, action, args)
    if scenario.expect is None:
        ids.remove(TARGET)

    actions = recover(q, revoke_claims=True)
    assert_consistent(q, ids, scenario.expect)
    drain(q)
    assert check(q.root, enqueued=ids, expect_finished=True) == [], actions
    assert set(places(q.root)) == set(ids)


@pytest.mark.parametrize("point", ["enqueue.after-reserve", "claim.after-rename",
                                   "complete.before-rename", "fail.after-rename",
                                   "revoke.after-rename"])
def test_raise_surfaces_as_oserror_and_recover_repairs(point, tmp_path, procs):
    scenario = SCENARIOS[point]
    q = Queue(tmp_path / "queue")
    ids = [*make_background(q), TARGET]
    child = procs.spawn("op", {"root": str(q.root), **scenario.setup(q)},
                        failpoints=f"{point}=raise", label=f"{point}-raise")
    code = procs.wait(child, CHILD_TIMEOUT)
    log = procs.log(child)
    assert code == EXIT_OSERROR, f"expected OSError(EIO) from {point}, exit {code}:\n{log}"
    assert f"failpoint {point}" in log

    recover(q, revoke_claims=True)
    assert_consistent(q, ids, scenario.expect)
    drain(q)
    assert check(q.root, enqueued=ids, expect_finished=True) == []


def test_failpoint_fires_only_on_its_nth_hit(tmp_path, procs):
    """``claim.after-rename=kill@2``: the first claim goes through, the second dies mid-claim."""
    q = Queue(tmp_path / "queue")
    ids = [*make_background(q), TARGET]
    q.enqueue({"id": TARGET, "priority": 0})
    run_to_failpoint(procs, q, "claim.after-rename", "kill@2", {"op": "claim", "repeat": 2})
    where = places(q.root)
    assert where[TARGET] == [("claimed", 1)]
    assert ("claimed", 1) in where["bg-pending"]  # the second claim died part-way

    recover(q, revoke_claims=True)
    assert check(q.root, enqueued=ids) == []
    where = places(q.root)
    assert where[TARGET] == [("pending", 2)] and where["bg-pending"] == [("pending", 2)]
    assert recover(q, revoke_claims=True) == []
    drain(q)
    assert check(q.root, enqueued=ids, expect_finished=True) == []


# Worker-side points where the process may be continued after a concurrent recover()
# (recover may run with live workers, but not alongside revoke or promote).
WORKER_OPS = {"enqueue": ("pending", 1), "claim": ("pending", 2), "complete": ("done", 1),
              "fail": ("failed", 1)}


@pytest.mark.parametrize("point", sorted(p for p in REGISTRY
                                         if p.split(".")[0] in WORKER_OPS))
def test_recover_while_stopped_at_failpoint_then_continue(point, tmp_path, procs):
    """A worker frozen at the point; recover() runs meanwhile; the worker then wakes
    and finishes its operation as if nothing happened."""
    scenario = SCENARIOS[point]
    q = Queue(tmp_path / "queue")
    ids = [*make_background(q), TARGET]
    args = scenario.setup(q)
    child = procs.spawn("op", {"root": str(q.root), **args}, failpoints=f"{point}=stop",
                        label=f"{point}-stop-cont")
    wait_stopped(child, CHILD_TIMEOUT)

    recover(q)  # a live (if frozen) worker: its claim must not be revoked

    child.send_signal(signal.SIGCONT)
    code = procs.wait(child, CHILD_TIMEOUT)
    assert code == EXIT_OK, f"the continued child failed (exit {code}):\n{procs.log(child)}"
    recover(q, revoke_claims=True)
    assert_consistent(q, ids, WORKER_OPS[args["op"]])
    drain(q)
    assert check(q.root, enqueued=ids, expect_finished=True) == []
