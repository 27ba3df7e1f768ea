"""What ``durable = true`` promises across a power loss, one test per promise.

A run of the queue's transitions is recorded under tests/powerloss.py's model (a
directory's changes persist in order and up to its last fsync; of the rest, any prefix
per directory; unsynced file bytes may be lost). After every prefix of the run, a few
states that model allows are written out, ``recover()`` runs on each as the coordinator
would after the machine came back (no worker survived: ``revoke_claims``), and each
promise of docs/protocol.md §7 is checked against the calls that had returned.

Each promise rests on named fsyncs: its test also removes them and expects the promise
to break in some state, so the test can fail and the fsync is shown to be needed.
Without ``durable`` the same run breaks promises (what §7 says a power loss may do).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.queue import fsops, names
from harness.queue.core import Queue
from harness.queue.invariants import check
from harness.queue.recovery import recover
from powerloss import JOURNAL, PER_DIRECTORY, Recorder, State, materialize

SAMPLES = 2  # random per-directory choices per cut, besides "all lost" and "all kept"

PROMISES = ("enqueue", "claim", "complete", "retry", "dead-letter", "promote", "requeue",
            "consistent")


def run_recorded(root: Path, clock, *, durable: bool) -> Recorder:
    """Every transition an item can take; each call between ``begin`` and its ``ack``."""
    q = Queue(root, durable=durable, clock=clock, relist_interval=0, max_attempts=3)
    rec = Recorder(root)

    def claim(item_id: str, attempt: int):
        rec.begin()
        c = q.claim()
        assert c is not None and (c.id, c.attempt) == (item_id, attempt)
        rec.ack("claim", item_id, attempt)
        return c

    rec.install()
    try:
        for item_id in ("a", "b", "c", "d"):
            rec.begin()
            q.enqueue({"id": item_id, "title": f"item {item_id}"})
            rec.ack("enqueue", item_id, (root / "ids" / item_id).read_bytes())
        c = claim("a", 1)
        rec.begin()
        c.complete()
        rec.ack("complete", "a", 1)
        c = claim("b", 1)
        rec.begin()
        assert c.fail("flaky", retry=True) == "retry"
        rec.ack("retry", "b", 1)
        c = claim("c", 1)
        rec.begin()
        assert c.fail(REASON, retry=False) == "failed"
        rec.ack("dead-letter", "c", 1)
        clock.advance(3600)
        rec.begin()
        assert [n.id for n in q.promote()] == ["b"]
        rec.ack("promote", "b", 2)
        c = claim("b", 2)
        rec.begin()
        c.complete()
        rec.ack("complete", "b", 2)
        rec.begin()
        new = q.requeue_failed("c")
        rec.ack("requeue", "c", new.attempt)
        claim("c", new.attempt)  # both left claimed: their workers die with the power
        claim("d", 1)
    finally:
        rec.uninstall()
    return rec


REASON = "broken input"


def kept(kind: str, attempt: int, st: str, name: names.ItemName, q: Queue) -> bool:
    """Whether an item found at ``st``/``name`` after recovery keeps what the call
    ``kind`` (on ``attempt``) did."""
    settled = st in ("done", "failed")
    return {
        "enqueue": True,
        "claim": settled or name.attempt > attempt,  # the attempt was counted
        "complete": st == "done",
        "retry": settled or name.attempt > attempt,
        "promote": settled or name.attempt >= attempt,
        "dead-letter": st == "failed" and q.failure_reason(name.id) == REASON,
        "requeue": st != "failed" and name.attempt >= attempt,
    }[kind]


def broken_promises(state: State, dest: Path, clock, model: str) -> set[tuple[str, str]]:
    """(promise, detail) for every promise ``state`` breaks once recovered. Under
    PER_DIRECTORY the item whose move was in flight may also have lost every name (a
    rename persisted at its source only): it is then held by ``ids/`` alone (or a stray
    staging name) or already dead-lettered as lost; or, claimed and moving on, be back in
    pending/ at the claimed attempt (the claim's source name came back). Nothing else may
    differ."""
    materialize(state, dest)
    q = Queue(dest, durable=True, clock=clock, relist_interval=0, max_attempts=3)
    recover(q, revoke_claims=True)
    moving = state.in_flight[1] if state.in_flight and model == PER_DIRECTORY else None
    broken = {("consistent", str(v)) for v in check(dest)
              if not (v.item == moving and v.code == "lost")}
    where: dict[str, list[tuple[str, names.ItemName]]] = {}
    for st, found in q.scan().items():
        for name in found:
            where.setdefault(name.id, []).append((st, name))
    last: dict[str, tuple[str, int]] = {}
    docs: dict[str, bytes] = {}
    for kind, item_id, arg in state.acked:
        if kind == "enqueue":
            docs[item_id] = arg
        last[item_id] = (kind, 0 if kind == "enqueue" else arg)
    for item_id, (kind, attempt) in last.items():
        places = where.get(item_id, [])
        if item_id == moving and (not places or places[0][0] == "failed" and q.failure_reason(
                item_id).startswith("lost:")):
            continue
        if item_id == moving and kind == "claim" and places[0][0] == "pending" and (
                places[0][1].attempt == attempt):
            continue  # the claim's source name came back: the attempt is run again, uncounted
        if len(places) != 1:
            broken.add(("enqueue", f"{item_id}: names {places} after an acknowledged enqueue"))
            continue
        st, name = places[0]
        if (dest / st / str(name)).read_bytes() != docs[item_id]:
            broken.add(("enqueue", f"{item_id}: its bytes changed ({st}/{name})"))
        if kept(kind, attempt, st, name, q):
            continue
        if state.in_flight and state.in_flight[1] == item_id and kept(
                state.in_flight[0], state.in_flight[2], st, name, q):
            continue  # the next call on it had started: its outcome may be there instead
        broken.add((kind, f"{item_id}: {st}/{name} after {kind} of attempt {attempt}"))
    return broken


@pytest.fixture
def scratch(tmp_path) -> Iterator[Path]:
    """Where runs and crash states are written: tmpfs when there is one (hundreds of
    small trees; the model, not the disk, decides what persisted)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="powerloss-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def every_broken_promise(tmp_path: Path, clock, model: str, *, durable: bool
                         ) -> dict[str, set[str]]:
    rec = run_recorded(tmp_path / "run", clock, durable=durable)
    out: dict[str, set[str]] = {p: set() for p in PROMISES}
    counter = itertools.count()
    seen: dict[object, set[tuple[str, str]]] = {}
    for cut, how, state in rec.crash_states(model, SAMPLES):
        key = state.key()  # many cuts leave the same state: recover and check it once
        if key not in seen:
            dest = tmp_path / f"crash{next(counter)}"
            seen[key] = broken_promises(state, dest, clock, model)
            shutil.rmtree(dest)
        for promise, detail in seen[key]:
            out[promise].add(f"cut {cut} ({how}): {detail}")
    return out


@contextmanager
def unsynced(dirs: tuple[str, ...] = (), files: bool = False) -> Iterator[None]:
    """Durable mode with the fsync of ``dirs`` (and, with ``files``, of files) left out."""
    real_dir, real_new = fsops.fsync_dir, fsops.write_new

    def fsync_dir(path) -> None:
        if Path(path).name not in dirs:
            real_dir(path)

    def write_new(path, data, *, durable, **kw):
        return real_new(path, data, durable=durable and not files, **kw)

    fsops.fsync_dir, fsops.write_new = fsync_dir, write_new
    try:
        yield
    finally:
        fsops.fsync_dir, fsops.write_new = real_dir, real_new


def test_durable_keeps_every_promise_through_a_power_loss_on_a_journaling_disk(scratch, clock):
    broken = every_broken_promise(scratch, clock, JOURNAL, durable=True)
    assert {p: sorted(d)[:3] for p, d in broken.items() if d} == {}


def test_durable_on_a_disk_without_a_journal_keeps_what_returned(scratch, clock):
    broken = every_broken_promise(scratch, clock, PER_DIRECTORY, durable=True)
    assert {p: sorted(d)[:3] for p, d in broken.items() if d} == {}


@pytest.mark.parametrize("model", [JOURNAL, PER_DIRECTORY])
def test_without_durable_a_power_loss_can_undo_what_returned(scratch, clock, model):
    broken = every_broken_promise(scratch, clock, model, durable=False)
    assert {p for p, d in broken.items() if d} >= {"enqueue", "claim", "complete", "retry",
                                                   "dead-letter", "promote", "requeue"}


# Each promise and the fsyncs it rests on: without them (the rest of durable kept), some
# crash state breaks it. Checked on the model without a journal, where one directory's
# fsync does not also persist another's changes.
RESTS_ON: dict[str, Callable[[], object]] = {
    "enqueue: the item file's bytes": lambda: unsynced(files=True),
    "enqueue: ids/": lambda: unsynced(("ids",)),
    "claim: claimed/": lambda: unsynced(("claimed",)),
    "complete: done/": lambda: unsynced(("done",)),
    "retry: waiting/": lambda: unsynced(("waiting",)),
    "dead-letter: failed/": lambda: unsynced(("failed",)),
    "promote: pending/": lambda: unsynced(("pending",)),
    "requeue: pending/": lambda: unsynced(("pending",)),
}


@pytest.mark.parametrize("case", sorted(RESTS_ON))
def test_each_promise_needs_its_fsync(scratch, clock, case):
    promise = case.split(":")[0]
    with RESTS_ON[case]():
        broken = every_broken_promise(scratch, clock, PER_DIRECTORY, durable=True)
    assert broken[promise], f"{case}: no crash state broke the promise without that fsync"
