"""Many real processes hammering one queue: nothing lost, nothing done twice.

Each worker is a separate Python process (tests/procs.py ``hammer``) in its
own session; all are released together by a start file once every one has
touched its ready file. Workers report every claim and outcome to their own
file and check themselves (exit 2 on an anomaly); the parent then checks the
union of the reports against the directories and ``invariants.check``.

The double-claim check is the one that caught ghost claims when claims were
``link(pending/N, claimed/N)`` + unlink: link(2) resolves its source before
it locks the target directory, so a claimant with a stale lookup re-created
claimed/N after the winner had finished it. Claims are now one rename.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from harness.queue import names
from harness.queue.invariants import check
from harness.queue.core import Queue
from harness.queue.recovery import recover
from tests.procs import Procs, queue_size, read_report, scaled, touch, wait_for

pytestmark = pytest.mark.timeout(scaled(120, 3000))

WORKERS = 8
DEADLINE = scaled(60.0, 3000)  # guards against hangs only; a healthy run takes seconds



def start_workers(procs: Procs, root: Path, work: Path, **extra) -> list:
    workers = []
    for k in range(WORKERS):
        workers.append(procs.spawn("hammer", {
            "root": str(root), "ready": str(work / f"ready-{k}"), "start": str(work / "start"),
            "out": str(work / f"out-{k}"), "seed": k, "deadline": DEADLINE, **extra,
        }, label=f"worker{k}"))
    wait_for(lambda: all((work / f"ready-{k}").exists() for k in range(WORKERS))
             or any(w.poll() is not None for w in workers), 30, "workers to get ready")
    assert all(w.poll() is None for w in workers), [procs.log(w) for w in workers]
    touch(work / "start")
    return workers


def key(name: str) -> tuple[str, int]:
    parsed = names.parse(name)
    return parsed.id, parsed.attempt


def listing(root: Path, state: str) -> set[str]:
    return set(names.entries(root / state))


def keys(root: Path, state: str) -> set[tuple[str, int]]:
    return {key(n) for n in listing(root, state)}


class Report:
    """All workers' reports: events per tag, claim counts, anomalies."""

    def __init__(self, work: Path) -> None:
        self.events: dict[str, set[tuple[str, int]]] = defaultdict(set)
        self.claims: Counter[tuple[str, int]] = Counter()
        self.per_worker: Counter[int] = Counter()
        self.anomalies: list[str] = []
        for k in range(WORKERS):
            for tag, value in read_report(work / f"out-{k}"):
                if tag == "A":
                    self.anomalies.append(f"worker {k}: {value}")
                    continue
                self.events[tag].add(key(value))
                if tag == "C":
                    self.claims[key(value)] += 1
                    self.per_worker[k] += 1

    def twice(self) -> list[tuple[str, int]]:
        return sorted(k for k, n in self.claims.items() if n > 1)


def assert_clean_exits(procs: Procs, workers: list, codes: list[int], report: Report) -> None:
    bad = {w.pid: (c, procs.log(w)) for w, c in zip(workers, codes) if c != 0}
    assert not bad, f"workers exited non-zero: {bad}; anomalies: {report.anomalies}"
    assert not report.anomalies, report.anomalies


def assert_quiescent_and_clean(q: Queue) -> None:
    """With every worker gone nothing may be left claimed, and recover() has nothing to do."""
    assert not listing(q.root, "claimed"), f"claims left behind: {listing(q.root, 'claimed')}"
    assert recover(q) == []


def test_eight_processes_claim_and_complete_every_item_exactly_once(tmp_path, procs):
    root, work = tmp_path / "queue", tmp_path / "work"
    work.mkdir()
    q = Queue(root)
    ids = [f"h{i:06d}" for i in range(queue_size(3000))]
    for item_id in ids:
        q.enqueue({"id": item_id, "priority": int(item_id[-1]) % 10})

    workers = start_workers(procs, root, work, strict=True)
    codes = procs.wait_all(workers, DEADLINE)

    report = Report(work)
    assert_clean_exits(procs, workers, codes, report)
    assert set(report.events) <= {"C", "D"}, set(report.events)
    assert not report.twice(), f"(id, attempt) claimed more than once: {report.twice()[:10]}"
    assert {i for i, _ in report.claims} == set(ids), "union of claims is not the enqueued ids"
    assert sum(report.claims.values()) == len(ids)
    assert all(attempt == 1 for _, attempt in report.claims), "attempt > 1 without a failure"
    assert report.events["D"] == report.events["C"], "a claim without its completion"
    assert len(report.per_worker) == WORKERS, "some worker never claimed: no real race"

    assert keys(root, "done") == {(i, 1) for i in ids}, "done/ is not attempt 1 of every id"
    for state in ("pending", "waiting", "failed"):
        assert not listing(root, state), f"{state}/ not empty"
    assert_quiescent_and_clean(q)
    assert check(root, enqueued=ids, expect_finished=True) == []


def test_chaos_failures_and_coordinator_revokes_keep_every_item_in_one_terminal_state(
        tmp_path, procs):
    """Workers fail some attempts (retry) and hang on others; the parent, acting as
    the coordinator, promotes due retries and revokes every claim older than
    ``revoke_after`` while workers race to finish them. Hung workers wait for
    the revoke and then must be fenced."""
    revoke_after = 0.005
    root, work = tmp_path / "queue", tmp_path / "work"
    work.mkdir()
    q = Queue(root)
    ids = [f"c{i:06d}" for i in range(queue_size(2000))]
    for item_id in ids:
        q.enqueue({"id": item_id, "max_attempts": 4})

    stop = work / "stop"
    workers = start_workers(procs, root, work, strict=False, stop=str(stop),
                            fail_rate=0.15, stuck_rate=0.01)

    revoked: set[tuple[str, int]] = set()
    revoke_outcomes: dict[tuple[str, int], str] = {}
    first_seen: dict[str, float] = {}
    deadline = time.monotonic() + DEADLINE
    while True:
        assert time.monotonic() < deadline, f"queue not drained: {q.counts()}"
        dead = [(w.pid, w.returncode, procs.log(w)) for w in workers if w.poll() is not None]
        assert not dead, f"workers exited before the stop file: {dead}"
        q.promote()
        now = time.monotonic()
        for entry in names.entries(root / "claimed"):
            if now - first_seen.setdefault(entry, now) <= revoke_after:
                continue
            outcome = q.revoke(entry, "stale claim")
            if outcome != "lost":
                revoked.add(key(entry))
                revoke_outcomes[key(entry)] = outcome
        counts = q.counts()
        if counts["pending"] + counts["claimed"] + counts["waiting"] == 0 and (
                counts["done"] + counts["failed"] >= len(ids)):
            terminal = {names.parse(n).id
                        for s in ("done", "failed") for n in listing(root, s)}
            if terminal == set(ids):
                break
        time.sleep(0.001)
    touch(stop)
    codes = procs.wait_all(workers, DEADLINE)

    verify_chaos(q, ids, Report(work), procs, workers, codes, revoked, revoke_outcomes)


def verify_chaos(q: Queue, ids: list[str], report: Report, procs: Procs, workers: list,
                 codes: list[int], revoked: set[tuple[str, int]],
                 revoke_outcomes: dict[tuple[str, int], str]) -> None:
    root, ev = q.root, report.events
    assert_clean_exits(procs, workers, codes, report)
    assert not report.twice(), f"(id, attempt) claimed twice: {report.twice()[:10]}"
    # Fencing from both sides: no revoked attempt recorded an outcome, every
    # fenced attempt was revoked, and every hung attempt was fenced.
    assert ev["S"], "no worker hung: the revoke path was not exercised"
    assert ev["S"] <= ev["F"]
    assert ev["F"] <= revoked
    assert not (ev["D"] | ev["R"] | ev["X"]) & revoked
    outcomes = [ev[t] for t in "DRXF"]
    assert sum(map(len, outcomes)) == len(set().union(*outcomes)), "two outcomes for one claim"
    assert set().union(*outcomes) == ev["C"], "a claim without an outcome"
    assert revoked & ev["C"] <= ev["F"]

    assert_quiescent_and_clean(q)
    done, failed = keys(root, "done"), keys(root, "failed")
    assert done == ev["D"], "done/ differs from what workers reported completing"
    assert failed == ev["X"] | {k for k, o in revoke_outcomes.items() if o == "failed"}
    assert not done & revoked
    done_ids, failed_ids = {i for i, _ in done}, {i for i, _ in failed}
    assert done_ids | failed_ids == set(ids) and not done_ids & failed_ids
    assert len(done) + len(failed) == len(ids), "an id with two terminal names"
    assert {i for i, _ in ev["C"]} | {i for i, _ in revoked} == set(ids)
    for state in ("pending", "claimed", "waiting"):
        assert not listing(root, state), f"{state}/ not empty"
    assert check(root, enqueued=ids, revoked=revoked, expect_finished=True) == []
