"""Enqueueing many items at link speed: one staging directory per batch, one lock for all.

``Queue.enqueue`` stages each item under a dot name, locks it, renames it into view
and then reserves and publishes it: eight syscalls and a pydantic round trip per
item. A batch takes one lock for all its items instead, so an item costs a create,
a write, two links and an unlink (docs/protocol.md §3, *bulk enqueue*)::

    tmp/batch-<16 hex>/          mkdir; .lock in it, flocked for the batch's life
    tmp/batch-<hex>/S            create (O_EXCL), write, [fsync]    S = N, the bare name
    link(S, ids/<id>)            the reservation: EEXIST → DuplicateId, S unlinked
    link(S, pending/N | waiting/N~dep); unlink(S)       (not atomic: at once, per item)

With ``atomic`` every item is staged and reserved first, then ``.committed`` is
created ([fsync of the batch directory and ids/]) and only then are the items
published; ``abort()`` (or a crash before ``.committed``) unreserves and removes
them all. What recover does with a batch whose lock is free (``recover_batch``):

- ``.committed`` present, or not atomic: every S linked to ids/ (``st_nlink`` ≥ 2) is
  rolled forward as a staged enqueue is; an S with ``st_nlink`` 1 was never
  reserved (it may be half written) and is removed: never acknowledged;
- atomic without ``.committed``: every S is removed and so is its reservation
  (``ids/<id>`` only if it is a link to S): nothing of the batch is enqueued.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from harness.queue import failpoints, fsops, names
from harness.queue.names import ItemName

PREFIX: Final = "batch-"
LOCK: Final = ".lock"
COMMITTED: Final = ".committed"
ATOMIC: Final = ".atomic"  # present from before the first item of an atomic batch
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


_fp_reserved = failpoints.define(
    "bulk.after-reserve", "a batch's item staged and linked into ids/; not yet published")
_fp_published = failpoints.define(
    "bulk.after-publish", "a batch's item linked into pending/; its staged name not removed")
_fp_before_commit = failpoints.define(
    "bulk.before-commit", "an atomic batch staged and reserved whole; .committed not written")
_fp_committed = failpoints.define(
    "bulk.after-commit", "an atomic batch's .committed written; no item published yet")


def is_batch(entry: str) -> bool:
    return entry.startswith(PREFIX)


class Batch:
    """One bulk enqueue into the queue at ``root``; use as a context manager.

    ``add(name, data)`` publishes (or, atomic, stages and reserves) one item whose
    document is ``data`` (already validated and stamped, as ``Item.to_json`` gives
    it); it raises FileExistsError if the id is taken (nothing is left of the item).
    ``commit()`` publishes an atomic batch; leaving the ``with`` block without a
    commit aborts it. ``durable`` fsyncs each file before it is linked and every
    directory a batch changed, once, at commit (not atomic: at close) — see
    docs/protocol.md §7 for what that promises.
    """

    def __init__(self, root: Path, *, atomic: bool, durable: bool, mode: int) -> None:
        self.root, self.atomic, self.durable, self.mode = Path(root), atomic, durable, mode
        self.dir = self.root / "tmp" / f"{PREFIX}{os.urandom(8).hex()}"
        self._ids = f"{self.root}/ids/"
        self._states = {"pending": f"{self.root}/pending/", "waiting": f"{self.root}/waiting/"}
        self._touched: set[str] = set()
        self.staged = 0
        os.mkdir(self.dir, 0o700)
        self._lock = os.open(self.dir / LOCK, _CREATE, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        if atomic:
            os.close(os.open(self.dir / ATOMIC, _CREATE, 0o600))
        self._prefix = f"{self.dir}/"

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: ItemName, data: bytes) -> None:
        # The bare queue name: the directory is this enqueuer's own and its order keys
        # strictly increase (names.next_order), so no two items share a name here and
        # the random suffix tmp/ needs (names.staged_name) would only cost a
        # getrandom per item. O_EXCL refuses a clash all the same.
        text = str(name)
        staged = self._prefix + text
        fd = os.open(staged, _CREATE, self.mode)
        try:
            if self.mode & 0o070:
                os.fchmod(fd, self.mode)  # a shared queue: group bits whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(staged, self._ids + name.id)
        except FileExistsError:
            os.unlink(staged)
            raise
        self.staged += 1
        _fp_reserved()
        if not self.atomic:
            self._publish(staged, name, text)

    def _publish(self, staged: str, name: ItemName, text: str) -> None:
        """Link the staged file in as ``text`` (``str(name)``: rendered once per item)."""
        state = "waiting" if name.due == names.DEP else "pending"
        os.link(staged, self._states[state] + text)
        self._touched.add(state)
        _fp_published()
        os.unlink(staged)

    def commit(self, on_published: Callable[[ItemName], None] = lambda name: None) -> None:
        """Atomic: mark the batch committed (from here a crash rolls it forward), then
        publish every staged item, telling ``on_published``. Not atomic: nothing to do."""
        if self.atomic:
            if self.durable:
                fsops.fsync_dir(self.dir)
                fsops.fsync_dir(self.root / "ids")
            _fp_before_commit()
            os.close(fsops.write_new(self.dir / COMMITTED, b"", durable=self.durable))
            if self.durable:
                fsops.fsync_dir(self.dir)
            _fp_committed()
            with os.scandir(self.dir) as it:
                for entry in it:
                    name = names.parse_staged(entry.name)
                    if name is not None:
                        self._publish(entry.path, name, str(name))
                        on_published(name)
        self.atomic = False  # committed: close() must not roll it back

    def close(self) -> None:
        """Finish: an atomic batch that was not committed is rolled back (unreserved and
        removed); then the batch directory goes, and the lock with it."""
        if self.atomic:
            _roll_back(self.dir, self.root)
        elif self.durable:
            fsops.fsync_dir(self.root / "ids")
            for state in self._touched:
                fsops.fsync_dir(self.root / state)
        _remove(self.dir)
        os.close(self._lock)


def recover_batch(root: Path, batch: Path, roll_forward: Callable[[Path, str], str]
                  ) -> list[str]:
    """Finish a batch whose enqueuer is gone (its lock is free); see the module doc.

    ``roll_forward(path, entry)`` finishes one reserved staged item as for tmp/S.
    Returns one line per change. Skips (returns []) a batch whose lock is held.
    """
    try:
        fd = os.open(batch / LOCK, os.O_RDWR)
    except FileNotFoundError:
        fd = None  # crashed between mkdir and the lock's creation (or removing it): dead
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # an enqueue in progress
        if os.path.exists(batch / COMMITTED) or not _was_atomic(batch):
            done = 0
            for entry in _staged(batch):
                path = batch / entry
                if os.stat(path).st_nlink >= 2:
                    roll_forward(path, entry)
                    done += 1
                else:
                    os.unlink(path)  # never reserved, maybe half written: never acknowledged
            lines = [f"finished interrupted bulk enqueue tmp/{batch.name}: {done} item(s)"]
        else:
            undone = _roll_back(batch, root)
            lines = [f"rolled back uncommitted atomic enqueue tmp/{batch.name}: {undone} item(s)"]
        _remove(batch)
        return lines
    finally:
        if fd is not None:
            os.close(fd)


def _was_atomic(batch: Path) -> bool:
    return os.path.exists(batch / ATOMIC)


def _staged(batch: Path) -> Iterator[str]:
    """The staged items' names in ``batch``, streamed: a crashed batch of a million
    items is finished or rolled back without holding its listing. The callers only
    remove entries while this reads, so each remaining one is yielded once."""
    with os.scandir(batch) as it:
        for e in it:
            if not e.name.startswith("."):
                yield e.name


def _roll_back(batch: Path, root: Path) -> int:
    """Remove every staged item of ``batch`` and the reservations that are links to it."""
    undone = 0
    for entry in _staged(batch):
        path = batch / entry
        name = names.parse_staged(entry)
        if name is not None and fsops.same_file(path, root / "ids" / name.id):
            fsops.unlink_quiet(root / "ids" / name.id)
            undone += 1
        fsops.unlink_quiet(path)
    return undone


def _remove(batch: Path) -> None:
    """Remove the (by now empty of items) batch directory: its markers, then itself."""
    for entry in os.listdir(batch):
        fsops.unlink_quiet(batch / entry)
    os.rmdir(batch)
