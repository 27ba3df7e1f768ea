"""Many real processes hammering one queue: nothing lost, nothing done twice.

Each worker is a separate Python process (tests/procs.py ``hammer``) in its
own session; all are released together by a start file once every one has
touched its ready file. Workers report every claim and outcome to their own
file and check themselves (exit 2 on an anomaly); the parent then checks the
union of the reports against the directories and ``invariants.check``.

Known bug (see GHOST_CLAIM): ``link(2)`` resolves its source name before it
locks the target directory, so a claimant holding a stale pending/ listing
can link ``claimed/N`` *after* another claimant removed ``pending/N`` and
renamed ``claimed/N`` to done/: the same attempt is claimed twice and the
resurrected claimed/N lingers (renaming it onto done/N, a link to the same
inode, is a no-op). These tests check every invariant strictly for all ids
untouched by such a ghost claim, and raise :class:`GhostClaim` (the xfail)
only for the ghost-claimed ids, so any other failure still fails the suite.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from harness import names
from harness.invariants import check
from harness.queue import Queue
from tests.procs import Procs, read_report, touch, wait_for

pytestmark = pytest.mark.timeout(120)

WORKERS = 8
DEADLINE = 60.0  # guards against hangs only; a healthy run takes a few seconds


class GhostClaim(AssertionError):
    """An (id, attempt) was claimed again after its claim had been finished."""


GHOST_CLAIM = pytest.mark.xfail(
    strict=True, raises=GhostClaim,
    reason="BUG: harness/queue.py Queue._try_claim claims with os.link(pending/N, claimed/N);"
           " link(2) looks the source up before locking the target dir, so a claimant with a"
           " stale listing re-creates claimed/N after another claimant unlinked pending/N and"
           " renamed claimed/N to done/N (double claim; the ghost claimed/N lingers)")


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path / "procs")
    try:
        yield p
    finally:
        p.kill_all()


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
        self.anomalies: list[tuple[int, str, str]] = []  # (worker, id, what)
        for k in range(WORKERS):
            for tag, value in read_report(work / f"out-{k}"):
                if tag == "A":
                    name, _, what = value.partition(" ")
                    self.anomalies.append((k, key(name)[0], f"{name}: {what}"))
                    continue
                self.events[tag].add(key(value))
                if tag == "C":
                    self.claims[key(value)] += 1
                    self.per_worker[k] += 1

    def twice(self) -> set[tuple[str, int]]:
        return {k for k, n in self.claims.items() if n > 1}

    def anomalies_except(self, ghosts: set[str]) -> list[str]:
        return [f"worker {k}: {what}" for k, i, what in self.anomalies if i not in ghosts]


def assert_clean_exits(procs: Procs, workers: list, codes: list[int], report: Report,
                       ghosts: set[str]) -> None:
    """Exit 0, or exit 2 (self-check anomaly) for anomalies on ghost-claimed ids only."""
    ghostly = {k for k, i, _ in report.anomalies if i in ghosts}
    bad = {w.pid: (c, procs.log(w)) for k, (w, c) in enumerate(zip(workers, codes))
           if c != 0 and not (c == 2 and k in ghostly)}
    assert not bad, f"workers exited non-zero: {bad}; anomalies: {report.anomalies}"
    assert not report.anomalies_except(ghosts), report.anomalies_except(ghosts)


def only(pairs: set[tuple[str, int]], ghosts: set[str]) -> set[tuple[str, int]]:
    return {p for p in pairs if p[0] not in ghosts}


def raise_if_ghosts(ghosts: set[str], evidence: list[str]) -> None:
    if ghosts:
        raise GhostClaim(f"{len(ghosts)} ids hit by ghost claims (every other id passed every"
                         f" check): {sorted(ghosts)[:10]}; evidence: {evidence[:10]}")


@GHOST_CLAIM
def test_eight_processes_claim_and_complete_every_item_exactly_once(tmp_path, procs):
    root, work = tmp_path / "queue", tmp_path / "work"
    work.mkdir()
    q = Queue(root)
    ids = [f"h{i:05d}" for i in range(3000)]
    for item_id in ids:
        q.enqueue({"id": item_id, "priority": int(item_id[-1]) % 10})

    workers = start_workers(procs, root, work, strict=True)
    codes = procs.wait_all(workers, DEADLINE)

    report = Report(work)
    # A ghost claim shows as the same (id, attempt) claimed by two workers, and
    # the resurrected claimed/N lingering beside done/N.
    ghost_pairs = report.twice() | keys(root, "claimed")
    ghosts = {i for i, _ in ghost_pairs}
    evidence = [f"claimed by {report.claims[p]} workers: {p}" for p in sorted(report.twice())]
    evidence += [f"claimed/ still holds {p}" for p in sorted(keys(root, "claimed"))]

    assert_clean_exits(procs, workers, codes, report, ghosts)
    assert set(report.events) <= {"C", "D"}, set(report.events)
    assert {i for i, _ in report.claims} == set(ids), "union of claims is not the enqueued ids"
    assert all(attempt == 1 for _, attempt in report.claims), "attempt > 1 without a failure"
    assert report.events["D"] == report.events["C"], "a claim without its completion"
    done = keys(root, "done")
    assert done == {(i, 1) for i in ids}, "done/ is not exactly attempt 1 of every id"
    assert len(listing(root, "done")) == len(ids)
    for state in ("pending", "waiting", "failed"):
        assert not listing(root, state), f"{state}/ not empty"
    assert not only(keys(root, "claimed"), ghosts)
    violations = [v for v in check(root, enqueued=ids, expect_finished=True)
                  if v.item not in ghosts]
    assert violations == []
    assert len(report.per_worker) == WORKERS, "some worker never claimed: no real race"
    raise_if_ghosts(ghosts, evidence)


@GHOST_CLAIM
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
    ids = [f"c{i:05d}" for i in range(2000)]
    for item_id in ids:
        q.enqueue({"id": item_id, "max_attempts": 4})

    stop = work / "stop"
    workers = start_workers(procs, root, work, strict=False, stop=str(stop),
                            fail_rate=0.15, stuck_rate=0.01)

    revoked: set[tuple[str, int]] = set()
    revoke_outcomes: dict[tuple[str, int], str] = {}
    first_seen: dict[str, float] = {}
    evidence: list[str] = []
    ghosts: set[str] = set()
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
            for state in ("done", "failed"):
                if (root / state / entry).exists():  # only a resurrected claim can do this
                    ghosts.add(key(entry)[0])
                    evidence.append(f"claimed/{entry} beside {state}/{entry}")
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

    report = Report(work)
    ev = report.events
    done, failed = keys(root, "done"), keys(root, "failed")
    terminal_count = Counter(i for i, _ in done | failed)
    ghosts |= {i for i, _ in report.twice()} | {i for i, n in terminal_count.items() if n > 1}
    evidence += [f"claimed by {report.claims[p]} workers: {p}" for p in sorted(report.twice())]
    evidence += [f"{n} terminal names: {i}" for i, n in terminal_count.items() if n > 1]

    assert_clean_exits(procs, workers, codes, report, ghosts)
    # Fencing from both sides: no revoked attempt recorded an outcome, every
    # fenced attempt was revoked, and every hung attempt was fenced.
    assert ev["S"], "no worker hung: the revoke path was not exercised"
    assert only(ev["S"], ghosts) <= ev["F"]
    assert only(ev["F"], ghosts) <= revoked
    assert not only((ev["D"] | ev["R"] | ev["X"]) & revoked, ghosts)
    outcomes = [only(ev[t], ghosts) for t in "DRXF"]
    assert sum(map(len, outcomes)) == len(set().union(*outcomes)), "two outcomes for one claim"
    assert set().union(*outcomes) == only(ev["C"], ghosts), "a claim without an outcome"
    assert only(revoked & ev["C"], ghosts) <= ev["F"]

    assert only(done, ghosts) == only(ev["D"], ghosts), "done/ differs from completions"
    assert only(failed, ghosts) == only(
        ev["X"] | {k for k, o in revoke_outcomes.items() if o == "failed"}, ghosts)
    assert not only(done & revoked, ghosts)
    done_ids, failed_ids = {i for i, _ in done}, {i for i, _ in failed}
    assert done_ids | failed_ids == set(ids)
    assert not (done_ids & failed_ids) - ghosts, "an id both done and failed"
    assert len(only(done | failed, ghosts)) == len(set(ids) - ghosts)
    assert {i for i, _ in ev["C"]} | {i for i, _ in revoked} == set(ids)
    for state in ("pending", "claimed", "waiting"):
        assert not listing(root, state), f"{state}/ not empty"
    violations = [v for v in check(root, enqueued=ids, revoked=revoked, expect_finished=True)
                  if v.item not in ghosts]
    assert violations == []
    raise_if_ghosts(ghosts, evidence)
