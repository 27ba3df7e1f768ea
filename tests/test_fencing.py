"""Fencing with real processes: a revoked claimant can never record an outcome.

A claim is the name ``claimed/<prio.order.id~attempt>``; completing or failing
is one rename of that name, and a revoke renames it away first. So a zombie
(a claimant frozen with SIGSTOP, then woken after its claim was revoked and
the item re-run) must get ``Fenced``, and when a revoke and a completion race
on one claim exactly one of them wins.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from harness.queue import names
from harness.queue.invariants import check
from harness.queue.core import Queue
from harness.queue.recovery import recover
from tests.procs import EXIT_FENCED, EXIT_OK, Procs, touch, wait_for, wait_stopped

pytestmark = pytest.mark.timeout(60)

CHILD_TIMEOUT = 30.0


def entries(root: Path, state: str) -> list[names.ItemName]:
    return sorted((names.parse(e) for e in names.entries(root / state)), key=str)


def claimant(procs: Procs, root: Path, work: Path, label: str, **extra):
    return procs.spawn("claim_then", {
        "root": str(root), "claimed_file": str(work / f"{label}.claimed"),
        "out": str(work / f"{label}.out"), **extra}, label=label)


@pytest.mark.parametrize("then", ["complete", "fail"])
@pytest.mark.parametrize("max_attempts", [3, 1], ids=["revoke-retries", "revoke-dead-letters"])
def test_zombie_claimant_is_fenced_after_revoke(then, max_attempts, tmp_path, procs):
    root, work = tmp_path / "queue", tmp_path / "work"
    work.mkdir()
    q = Queue(root)
    q.enqueue({"id": "z", "max_attempts": max_attempts})

    # A claims, tells us which name it holds, and freezes itself.
    a = claimant(procs, root, work, "A", stop_self=True, then=then)
    wait_stopped(a, CHILD_TIMEOUT)
    a_name = names.parse((work / "A.claimed").read_text())
    assert (a_name.id, a_name.attempt) == ("z", 1)
    assert [str(n) for n in entries(root, "claimed")] == [str(a_name)]

    # The coordinator decides A is dead and takes the claim back.
    outcome = q.revoke(a_name, "owner stopped responding")
    revoked = {("z", 1)}

    if outcome == "retry":
        # B runs attempt 2 to completion while A is still frozen.
        b = claimant(procs, root, work, "B", then="complete")
        assert procs.wait(b, CHILD_TIMEOUT) == EXIT_OK, procs.log(b)
        b_name = names.parse((work / "B.claimed").read_text())
        assert (b_name.id, b_name.attempt) == ("z", 2)
        expected = ("done", 2)
    else:
        assert outcome == "failed" and max_attempts == 1
        expected = ("failed", 1)

    # A wakes up and tries to record its outcome: it must be fenced.
    a.send_signal(signal.SIGCONT)
    code = procs.wait(a, CHILD_TIMEOUT)
    assert code == EXIT_FENCED, f"zombie was not fenced (exit {code}):\n{procs.log(a)}"
    assert (work / "A.out").read_text() == "live=False fenced"

    state, attempt = expected
    assert [(n.id, n.attempt) for n in entries(root, state)] == [("z", attempt)]
    for other in {"pending", "claimed", "waiting", "done", "failed"} - {state}:
        assert entries(root, other) == [], f"{other}/ not empty"
    if state == "failed":
        assert "revoked after attempt 1" in q.failure_reason("z")
    assert check(root, enqueued=["z"], revoked=revoked, expect_finished=True) == []
    assert recover(q) == []


def test_revoke_and_complete_race_exactly_one_wins(tmp_path, procs):
    """Two processes released together on one claim, round after round: the owner
    completes while the coordinator revokes. Exactly one rename wins each time."""
    rounds = 150
    root, work = tmp_path / "queue", tmp_path / "work"
    work.mkdir()
    q = Queue(root)
    ids = [f"r{i:04d}" for i in range(rounds)]
    for item_id in ids:
        q.enqueue({"id": item_id, "max_attempts": 3})

    common = {"root": str(root), "dir": str(work), "rounds": rounds, "deadline": 50}
    completer = procs.spawn("race", {**common, "role": "complete"}, label="completer")
    revoker = procs.spawn("race", {**common, "role": "revoke"}, label="revoker")

    def alive():
        for p in (completer, revoker):
            assert p.poll() is None or p.returncode == EXIT_OK, procs.log(p)
        return True

    revoked: set[tuple[str, int]] = set()
    tally: Counter[tuple[str, str]] = Counter()
    for r in range(rounds):
        touch(work / f"begin-{r}")
        wait_for(lambda: alive() and (work / f"armed-{r}").exists(), CHILD_TIMEOUT,
                 f"round {r} to be armed", step=0.0002)
        name = names.parse((work / f"claimed-{r}").read_text())
        touch(work / f"go-{r}")
        wait_for(lambda: alive() and (work / f"complete-{r}").exists()
                 and (work / f"revoke-{r}").exists(), CHILD_TIMEOUT,
                 f"round {r} results", step=0.0002)
        completed = (work / f"complete-{r}").read_text()
        revoke = (work / f"revoke-{r}").read_text()
        tally[(completed, revoke)] += 1
        if completed == "done":
            assert revoke == "lost", f"round {r} {name}: completed and revoked ({revoke})"
            assert (root / "done" / str(name)).exists()
        else:
            assert completed == "fenced", f"round {r} {name}: {completed}"
            assert revoke in ("retry", "failed"), f"round {r} {name}: both lost ({revoke})"
            revoked.add((name.id, name.attempt))
            assert not (root / "done" / str(name)).exists()
        assert not (root / "claimed" / str(name)).exists()
        assert check(root, enqueued=ids, revoked=revoked) == [], f"after round {r}"

    for p in (completer, revoker):
        assert procs.wait(p, CHILD_TIMEOUT) == EXIT_OK, procs.log(p)
    assert sum(tally.values()) == rounds
    assert set(tally) <= {("done", "lost"), ("fenced", "retry"), ("fenced", "failed")}, tally

    # Drain what the revokes sent back; the revoked attempts must stay out of done/.
    while (claim := q.claim()) is not None:
        claim.complete()
    assert check(root, enqueued=ids, revoked=revoked, expect_finished=True) == []
    print(f"race outcomes over {rounds} rounds: {dict(tally)}")
