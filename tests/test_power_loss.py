"""What ``durable = true`` promises across a power loss (docs/protocol.md §7).

A run through every queue transition is recorded (tests/powerloss.py). After every
prefix of it, the states a disk could be left in are rebuilt under two models (with a
journal: one prefix of the changes, renames whole; without: each directory on its own),
``recover()`` runs on each as the coordinator would once the machine is back (no worker
survived: ``revoke_claims``), and each promise is checked against the calls that had
returned.

Each promise rests on named fsyncs: a test leaves them out and expects the promise to
break in some state, so the checks can fail and each fsync is shown to be needed.
Without ``durable`` the same run breaks every promise (what §7 says a power loss may do).
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

from harness.queue import fsops
from harness.queue.core import Queue
from harness.queue.recovery import recover
from powerloss import JOURNAL, PER_DIRECTORY, REASONS, Recorder, State, judge, materialize

SAMPLES = 2  # random per-directory choices per cut, besides "all lost" and "all kept"

PROMISES = ("enqueue", "claim", "complete", "retry", "dead-letter", "promote", "requeue",
            "revoke", "reject", "cancel", "consistent")


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
        for item_id in ("a", "b", "c", "d", "e", "f"):
            rec.begin()
            q.enqueue({"id": item_id, "title": f"item {item_id}"})
            rec.ack("enqueue", item_id, (root / "ids" / item_id).read_bytes())
        c = claim("a", 1)
        with rec.step("complete", "a", 1):
            c.complete()
        c = claim("b", 1)
        with rec.step("retry", "b", 1):
            assert c.fail("flaky", retry=True) == "retry"
        c = claim("c", 1)
        with rec.step("dead-letter", "c", 1):
            assert c.fail(REASONS["dead-letter"], retry=False) == "failed"
        clock.advance(3600)
        with rec.step("promote", "b", 2):
            assert [n.id for n in q.promote()] == ["b"]
        c = claim("b", 2)
        with rec.step("complete", "b", 2):
            c.complete()
        rec.begin()
        new = q.requeue_failed("c")
        rec.ack("requeue", "c", new.attempt)
        claim("c", new.attempt)  # both left claimed: their workers die with the power
        claim("d", 1)
        c = claim("e", 1)
        with rec.step("revoke", "e", 1):
            assert q.revoke(c.name, "stale heartbeat") == "retry"
        c = claim("e", 2)
        with rec.step("complete", "e", 2):
            c.complete()
        with rec.step("reject", "e", 2):
            assert q.reject(c.name, REASONS["reject"])
        with rec.step("cancel", "f", 1):
            assert q.cancel_unclaimed("f", REASONS["cancel"])
    finally:
        rec.uninstall()
    return rec


def broken_promises(state: State, dest: Path, clock, model: str, every_unsynced_lost: bool
                    ) -> set[tuple[str, str]]:
    """(promise, detail) for every promise ``state`` breaks once recovered."""
    materialize(state, dest)
    q = Queue(dest, durable=True, clock=clock, relist_interval=0, max_attempts=3)
    recover(q, revoke_claims=True)
    return judge(q, state.acked, state.in_flight, journaled=model == JOURNAL,
                 every_unsynced_lost=every_unsynced_lost)


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


def every_broken_promise(tmp_path: Path, clock, model: str, *, durable: bool,
                         samples: int = SAMPLES) -> dict[str, set[str]]:
    rec = run_recorded(tmp_path / "run", clock, durable=durable)
    out: dict[str, set[str]] = {p: set() for p in PROMISES}
    counter = itertools.count()
    seen: dict[object, set[tuple[str, str]]] = {}
    for cut, how, state in rec.crash_states(model, samples):
        lost = how == "unsynced lost"
        key = (state.key(), lost)  # many cuts leave the same state: check it once
        if key not in seen:
            dest = tmp_path / f"crash{next(counter)}"
            seen[key] = broken_promises(state, dest, clock, model, lost)
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


def test_without_durable_a_power_loss_can_undo_what_returned(scratch, clock):
    broken = every_broken_promise(scratch, clock, JOURNAL, durable=False)
    assert {p for p, d in broken.items() if d} >= set(PROMISES) - {"consistent"}


# The fsyncs each promise rests on: without them (the rest of durable kept), some crash
# state breaks it. Checked on the model without a journal, where one directory's fsync
# does not also persist another's changes.
RESTS_ON: dict[str, tuple[Callable[[], object], tuple[str, ...]]] = {
    "the item file's bytes": (lambda: unsynced(files=True), ("enqueue",)),
    "ids/": (lambda: unsynced(("ids",)), ("enqueue",)),
    "claimed/": (lambda: unsynced(("claimed",)), ("claim",)),
    "done/": (lambda: unsynced(("done",)), ("complete",)),
    "waiting/": (lambda: unsynced(("waiting",)), ("retry",)),
    "failed/": (lambda: unsynced(("failed",)), ("dead-letter", "reject", "cancel")),
    "pending/": (lambda: unsynced(("pending",)), ("promote", "requeue", "revoke")),
}


@pytest.mark.parametrize("fsync", sorted(RESTS_ON))
def test_each_promise_needs_its_fsyncs(scratch, clock, fsync):
    leave_out, promises = RESTS_ON[fsync]
    with leave_out():
        broken = every_broken_promise(scratch, clock, PER_DIRECTORY, durable=True, samples=0)
    assert [p for p in promises if not broken[p]] == [], f"kept without the fsync of {fsync}"
