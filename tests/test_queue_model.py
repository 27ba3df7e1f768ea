"""A Hypothesis state machine: the real queue against an in-memory model.

Several in-process "workers" (each with its own Queue object, as separate
processes would have) and one "coordinator" share one temporary directory.
Workers claim, complete, fail, release (rate limit: not counted), crash (forget
their claim, leave the files) and become zombies (keep a claim the coordinator
revoked). The coordinator revokes, promotes on an injected clock and recovers;
an operator requeues, cancels, rejects and looks items up. After every step the
directory must satisfy ``harness.queue.invariants.check`` with the model's history,
and every id must be in exactly the state, attempt, free count and due time the
model says.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from harness.queue import names
from harness.queue.invariants import check
from harness.queue.item import InvalidItem
from harness.queue.names import DEP, ItemName
from harness.queue.core import Claim, DuplicateId, Fenced, Queue, QueueError
from harness.queue.recovery import recover

pytestmark = pytest.mark.timeout(120)

WORKERS = 3
IDS = [f"t{n}" for n in range(7)]
DEFAULT_MAX_ATTEMPTS = 3
BACKOFF_BASE, BACKOFF_MAX = 5.0, 40.0
START = 1_700_000_000.0


@dataclass
class Model:
    """What the model believes about one item."""

    priority: int
    order: str
    deps: list[str]
    limit: int
    state: str = "pending"
    attempt: int = 1
    due: int | str | None = None
    reason: str | None = None
    free: int = 0  # attempts not counted against the limit (revoked at shutdown)

    def name(self, item_id: str) -> ItemName:
        return ItemName(self.priority, self.order, item_id, self.attempt, self.due, self.free)


@dataclass
class Worker:
    queue: Queue
    claim: Claim | None = None


@dataclass
class History:
    revoked: set[tuple[str, int]] = field(default_factory=set)
    past_claims: list[str] = field(default_factory=list)   # claimed/ names since moved on
    highest_attempt: dict[str, int] = field(default_factory=dict)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="queue-model-")
        self.root = Path(self.tmp) / "queue"
        self.now = START

        def clock() -> float:
            return self.now

        def make() -> Queue:
            # relist_interval < 0: every claim() lists pending/ afresh, so the claimed
            # item is exactly predictable (a cached listing is tested elsewhere).
            return Queue(self.root, clock=clock, relist_interval=-1,
                         max_attempts=DEFAULT_MAX_ATTEMPTS, backoff_base=BACKOFF_BASE,
                         backoff_max=BACKOFF_MAX)

        self.coordinator = make()
        self.workers = [Worker(make()) for _ in range(WORKERS)]
        self.items: dict[str, Model] = {}
        self.history = History()
        self.anonymous = 0

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------

    def _busy(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.claim is not None]

    def _free(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.claim is None]

    def _in(self, state: str) -> list[str]:
        # Enqueue order, never sorted by id: anonymous ids carry random bits, and a
        # draw from a list whose order changes between runs makes Hypothesis's
        # replay diverge (FlakyStrategyDefinition).
        return [i for i, m in self.items.items() if m.state == state]

    def _live(self, claim: Claim) -> bool:
        m = self.items[claim.id]
        return m.state == "claimed" and m.attempt == claim.attempt

    def _leave_claimed(self, item_id: str) -> None:
        m = self.items[item_id]
        assert m.state == "claimed"
        self.history.past_claims.append(str(m.name(item_id)))

    def _expect_revoke(self, item_id: str, count: bool) -> str:
        """Apply a revoke of the current claim of ``item_id`` to the model."""
        m = self.items[item_id]
        self._leave_claimed(item_id)
        self.history.revoked.add((item_id, m.attempt))
        if m.attempt - m.free < m.limit or not count:
            m.state, m.attempt, m.due = "pending", m.attempt + 1, None
            m.free += not count
            return "retry"
        m.state, m.due = "failed", None
        m.reason = f"revoked after attempt {m.attempt}: "
        return "failed"

    # -- enqueue -----------------------------------------------------------------

    def _enqueue(self, data) -> None:
        kind = data.draw(st.sampled_from(["id", "id", "id", "id", "anonymous", "unknown-dep"]),
                         label="kind")
        priority = data.draw(st.integers(0, 3), label="priority")
        if kind == "anonymous":
            if self.anonymous >= 3:
                return
            self.anonymous += 1
            name = self.coordinator.enqueue({"title": "anonymous", "priority": priority})
            assert name.id not in self.items and names.validate_id(name.id) == name.id
            self.items[name.id] = Model(priority, name.order, [], DEFAULT_MAX_ATTEMPTS)
            return
        item_id = data.draw(st.sampled_from(IDS), label="id")
        if kind == "unknown-dep":
            missing = data.draw(st.sampled_from(["ghost", *sorted(set(IDS) - set(self.items))]),
                                label="missing dep")
            with pytest.raises((InvalidItem, DuplicateId)) as info:
                self.coordinator.enqueue({"id": item_id, "depends_on": [missing]})
            if item_id not in self.items:   # nothing was reserved
                assert isinstance(info.value, InvalidItem) and repr(missing) in str(info.value)
            return
        others = [i for i in self.items if i != item_id]
        deps = data.draw(st.lists(st.sampled_from(others), max_size=2, unique=True)
                         if others and data.draw(st.integers(0, 2), label="with deps") == 0
                         else st.just([]),
                         label="deps")
        max_attempts = data.draw(st.sampled_from([None, None, 1, 2, 4]), label="max_attempts")
        doc = {"id": item_id, "priority": priority, "depends_on": deps}
        if max_attempts is not None:
            doc["max_attempts"] = max_attempts
        if item_id in self.items:
            with pytest.raises(DuplicateId):
                self.coordinator.enqueue(doc)
            return
        name = self.coordinator.enqueue(doc)
        assert (name.id, name.priority, name.attempt) == (item_id, priority, 1)
        assert name.due == (DEP if deps else None)
        self.items[item_id] = Model(priority, name.order, deps,
                                    max_attempts or DEFAULT_MAX_ATTEMPTS,
                                    state="waiting" if deps else "pending", due=name.due)

    @initialize(data=st.data(), n=st.integers(1, 4))
    def some_items(self, data, n):
        for _ in range(n):
            self._enqueue(data)

    @rule(data=st.data(), n=st.integers(1, 3))
    def enqueue(self, data, n):
        """Enqueue new ids (some depending on existing ones) and refused duplicates."""
        for _ in range(n):
            self._enqueue(data)

    # -- workers -------------------------------------------------------------------

    @precondition(lambda self: self._free())
    @rule(data=st.data())
    def claim(self, data):
        w = data.draw(st.sampled_from(self._free()), label="worker")
        candidates = sorted((m.priority, m.order, i) for i, m in self.items.items()
                            if m.state == "pending")
        got = self.workers[w].queue.claim()
        if not candidates:
            assert got is None
            return
        want = candidates[0][2]
        assert got is not None, f"expected {want} to be claimed"
        m = self.items[want]
        assert (got.id, got.attempt, got.name) == (want, m.attempt, m.name(want))
        assert got.item.depends_on == m.deps
        m.state = "claimed"
        self.workers[w].claim = got

    @precondition(lambda self: self._busy())
    @rule(data=st.data(), how=st.sampled_from(
        ["complete", "complete", "complete", "retry", "give-up", "release", "crash"]))
    def finish(self, data, how):
        """A busy worker records its outcome (a zombie must be Fenced and change
        nothing), gives the item back for a rate limit, or dies (its memory is gone,
        its claimed/ name stays)."""
        w = data.draw(st.sampled_from(self._busy()), label="worker")
        claim, self.workers[w].claim = self.workers[w].claim, None
        if how == "crash":
            return
        reason = f"attempt {claim.attempt} of {claim.id} failed"
        delay = data.draw(st.sampled_from([0, 1, 30]), label="delay") if how == "release" else 0
        record = {"complete": claim.complete,
                  "retry": lambda: claim.fail(reason, retry=True),
                  "give-up": lambda: claim.fail(reason, retry=False),
                  "release": lambda: claim.release(delay)}[how]
        if not self._live(claim):
            with pytest.raises(Fenced):
                record()
            return
        result = record()
        self._leave_claimed(claim.id)
        m = self.items[claim.id]
        if how == "complete":
            assert result == self.root / "done" / str(claim.name)
            m.state = "done"
        elif how == "release":
            m.state, m.due = "waiting", int((self.now + delay) * 1000)
            m.attempt, m.free = m.attempt + 1, m.free + 1
        elif how == "retry" and m.attempt - m.free < m.limit:
            assert result == "retry"
            backoff = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (m.attempt - 1))
            m.state, m.due = "waiting", int((self.now + backoff) * 1000)
            m.attempt += 1
        else:
            assert result == "failed"
            m.state, m.reason = "failed", reason
            assert self.coordinator.failure_reason(claim.id) == reason

    # -- coordinator -------------------------------------------------------------------

    @precondition(lambda self: self._in("claimed") or self.history.past_claims)
    @rule(data=st.data(), count=st.booleans())
    def revoke(self, data, count):
        """Revoke a current claim (a crashed worker's, or a live one's: it becomes a
        zombie), or one that already ended (completed, failed, revoked): 'lost'."""
        if not self._in("claimed") or data.draw(st.integers(0, 3), label="too late") == 0:
            if self.history.past_claims:
                entry = data.draw(st.sampled_from(self.history.past_claims), label="old claim")
                assert self.coordinator.revoke(entry, "late", count=count) == "lost"
                return
        if not self._in("claimed"):
            return
        item_id = data.draw(st.sampled_from(self._in("claimed")), label="item")
        name = self.items[item_id].name(item_id)
        expected = self._expect_revoke(item_id, count)
        assert self.coordinator.revoke(name, "stale", count=count) == expected
        if expected == "failed":
            reason = self.coordinator.failure_reason(item_id)
            assert reason == f"revoked after attempt {name.attempt}: stale"

    @precondition(lambda self: any(self._live(self.workers[w].claim) for w in self._busy()))
    @rule(data=st.data())
    def pause_worker_and_revoke(self, data):
        """SIGSTOP a worker mid-attempt; the coordinator revokes its claim; it keeps it."""
        w = data.draw(st.sampled_from(
            [w for w in self._busy() if self._live(self.workers[w].claim)]), label="worker")
        claim = self.workers[w].claim
        expected = self._expect_revoke(claim.id, True)
        assert self.coordinator.revoke(claim.name, "heartbeat stale") == expected
        assert not claim.is_live()
        # The zombie resumes and tries to record an outcome right now or later (the
        # finish rule): it must be Fenced and change nothing.
        if data.draw(st.booleans(), label="resume now"):
            self.workers[w].claim = None
            with pytest.raises(Fenced):
                claim.complete()

    @rule(seconds=st.sampled_from([0, 0, 0.001, 1, 4.999, 5, 10, 20, 41, 100]),
          action=st.sampled_from(["promote", "promote", "promote", "idle", "recover",
                                  "everyone-died"]))
    def tick(self, seconds, action):
        """Time passes; the coordinator promotes due retries and unblocked dependants,
        or runs recovery (see _recover)."""
        self.now += seconds
        if action == "promote":
            self._promote()
        elif action != "idle":
            self._recover(everyone_died=action == "everyone-died")

    def _promote(self):
        now_ms = int(self.now * 1000)
        terminal = {i: m.state for i, m in self.items.items() if m.state in ("done", "failed")}
        expected, dead = [], {}
        for item_id in self._in("waiting"):
            m = self.items[item_id]
            if m.due == DEP:
                blocker = next((d for d in m.deps if terminal.get(d) != "done"), None)
                if blocker is not None:
                    if terminal.get(blocker) == "failed":
                        dead[item_id] = blocker
                    continue
            elif m.due > now_ms:
                continue
            expected.append(item_id)
        promoted = self.coordinator.promote()
        assert sorted(promoted, key=str) == sorted(
            (self.items[i].name(i).ready() for i in expected), key=str)
        for item_id in expected:
            self.items[item_id].state, self.items[item_id].due = "pending", None
        for item_id, blocker in dead.items():
            m = self.items[item_id]
            m.state, m.due = "failed", None
            reason = self.coordinator.failure_reason(item_id)
            assert reason.startswith(f"dependency {blocker!r} failed: "), reason

    @precondition(lambda self: self.items)
    @rule(data=st.data(), action=st.sampled_from(
        ["requeue", "requeue", "cancel", "reject", "reject", "find"]))
    def operator(self, data, action):
        """Operator and merge-queue actions: retry a dead letter, cancel an unclaimed
        item, reject a done one (its merge conflicted), look an item up."""
        item_id = data.draw(st.sampled_from(list(self.items)), label="item")
        m = self.items[item_id]
        if action == "requeue":
            if m.state != "failed":
                with pytest.raises(QueueError, match="not in failed/"):
                    self.coordinator.requeue_failed(item_id)
                return
            # A fresh attempt budget: every earlier attempt becomes free.
            m.state, m.attempt, m.free, m.due = "pending", m.attempt + 1, m.attempt, None
            assert self.coordinator.requeue_failed(item_id) == m.name(item_id)
            assert self.coordinator.failure_reason(item_id) == "(not failed)"
        elif action == "cancel":
            cancelled = self.coordinator.cancel_unclaimed(item_id, f"cancelled {item_id}")
            assert cancelled == (m.state in ("pending", "waiting"))
            if cancelled:
                m.state, m.due = "failed", None
                assert self.coordinator.failure_reason(item_id) == f"cancelled {item_id}"
        elif action == "reject":
            rejected = self.coordinator.reject(m.name(item_id), "merge conflict")
            assert rejected == (m.state == "done")
            if rejected:
                m.state = "failed"
                assert self.coordinator.failure_reason(item_id) == "merge conflict"
        else:
            assert self.coordinator.find(item_id) == m.name(item_id)
            elsewhere = tuple(s for s in names.STATES if s != m.state)
            assert self.coordinator.find(item_id, elsewhere) is None

    def _recover(self, everyone_died: bool) -> None:
        """Without revoke_claims, a consistent queue needs no repair and live (or
        crashed) workers' claims stay. When every worker has died, fsck --repair's
        recover(revoke_claims=True) returns each claim."""
        if not everyone_died:
            assert recover(self.coordinator) == []
            return
        for w in self.workers:
            w.claim = None
        expected = []
        for item_id in self._in("claimed"):
            name = self.items[item_id].name(item_id)
            expected.append(f"revoked claimed/{name}: {self._expect_revoke(item_id, True)}")
        assert sorted(recover(self.coordinator, revoke_claims=True)) == sorted(expected)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def directory_matches_model(self):
        violations = check(self.root, enqueued=self.items, revoked=self.history.revoked)
        assert violations == [], "\n".join(map(str, violations))
        scan = self.coordinator.scan()
        assert list(scan) == list(names.STATES), f"foreign entries: {scan}"
        seen: dict[str, tuple[str, ItemName]] = {}
        for state in names.STATES:
            for name in scan[state]:
                assert name.id not in seen, f"{name.id} in {seen[name.id][0]}/ and {state}/"
                seen[name.id] = (state, name)
        assert seen.keys() == self.items.keys()
        for item_id, m in self.items.items():
            state, name = seen[item_id]
            assert (state, name) == (m.state, m.name(item_id)), (item_id, m)
            assert name.attempt >= self.history.highest_attempt.get(item_id, 1)
            self.history.highest_attempt[item_id] = name.attempt
        counts = self.coordinator.counts()
        assert counts == {s: len(self._in(s)) for s in names.STATES}
        # Every claim a worker believes live is live on disk, and vice versa.
        for w in self.workers:
            if w.claim is not None:
                assert w.claim.is_live() == self._live(w.claim)


QueueMachine.TestCase.settings = settings(
    max_examples=75,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueMachine.TestCase
