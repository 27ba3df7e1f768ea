"""A power-loss model for the queue: record what a run did to the disk, rebuild what a
power loss could leave, and let the tests run recovery on each such state.

This is the ALICE approach (Pillai et al., OSDI '14) in miniature. :class:`Recorder`
wraps the ``os`` calls that change a directory or a file under one root (``open`` with
``O_CREAT``, ``write``, ``rename``/``replace``, ``link``, ``unlink``, ``mkdir``,
``rmdir``, ``fsync``/``fdatasync``) while the real calls go ahead, and keeps an
ordered log of their effects on a model of the namespace (inodes numbered by the
model, so a reused ``st_ino`` cannot confuse two files). :meth:`Recorder.crash_state`
rebuilds, for a cut after any prefix of that log, a state one of two persistence
models allows:

- ``JOURNAL`` (ext4 with its journal, XFS): the namespace changes persist as one prefix
  of the log, a ``rename`` whole or not at all; an ``fsync`` of a directory persists
  every change up to that directory's last one;
- ``PER_DIRECTORY`` (ext2, ext4 without a journal: this project's CI disk): each
  directory's changes persist in order and all of those before an ``fsync`` of it have;
  of the later ones any prefix may have, chosen for each directory on its own. So a
  ``rename`` between two directories can persist at its source, at its target, at both
  or at neither.

In both, a file's bytes written before its last ``fsync`` persist; later ones may be
lost (the file comes back shorter or empty).

:func:`materialize` writes such a state into a fresh directory (each inode once, its
other names as hard links, so link counts are what a file system check would leave), and
:func:`judge` says which promises of docs/protocol.md §7 a recovered queue breaks, given the
calls that had returned (bench/powerloss_lab.py judges real power cuts with it too).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.queue import names
from harness.queue.core import Queue
from harness.queue.invariants import check

JOURNAL, PER_DIRECTORY = "journal", "per-directory"
ROOT = 1  # the recorded root is the first inode the model numbers
_WRAPPED = ("open", "write", "close", "fsync", "fdatasync", "rename", "replace", "link",
            "unlink", "remove", "mkdir", "rmdir")


@dataclass(frozen=True)
class Entry:
    """``dir``'s entry ``name`` now points at inode ``ino`` (None: removed); the two
    entries of one rename share ``step``."""
    dir: int
    name: str
    ino: int | None
    step: int


@dataclass(frozen=True)
class Write:
    ino: int
    data: bytes


@dataclass(frozen=True)
class Sync:
    """fsync of inode ``ino`` (a directory's entries or a file's bytes)."""
    ino: int


@dataclass(frozen=True)
class Begin:
    """A call of the code under test starts; the next Ack says what it did."""


@dataclass(frozen=True)
class Ack:
    """A call of the code under test returned: ``what`` is the caller's record of it."""
    what: tuple[Any, ...]


Op = Entry | Write | Sync | Begin | Ack


@dataclass
class State:
    """What a power loss left: each directory's entries and each file's bytes."""
    root: int
    dir_inodes: frozenset[int]
    dirs: dict[int, dict[str, int]]
    files: dict[int, bytes]
    acked: list[tuple[Any, ...]]
    in_flight: tuple[Any, ...] | None  # the Ack of the call the power loss interrupted

    def key(self) -> tuple[Any, ...]:
        """Equal for two states that recover alike and are judged alike."""
        return (tuple(sorted((d, tuple(sorted(e.items()))) for d, e in self.dirs.items())),
                tuple(sorted(self.files.items())), tuple(map(repr, self.acked)),
                repr(self.in_flight))


@dataclass
class Recorder:
    """Log every change under ``root`` made through ``os`` while installed (see module)."""
    root: Path
    ops: list[Op] = field(default_factory=list)
    _ns: dict[str, int] = field(default_factory=dict)  # live path -> inode
    _is_dir: dict[int, bool] = field(default_factory=dict)
    _fds: dict[int, int] = field(default_factory=dict)
    _initial_dirs: dict[int, dict[str, int]] = field(default_factory=dict)
    _initial_files: dict[int, bytes] = field(default_factory=dict)
    _real: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(self.root))
        self._snapshot()

    # -- the starting state: everything on disk is taken as durable ----------------------

    def _snapshot(self) -> None:
        by_inode: dict[tuple[int, int], int] = {}
        self._ns[str(self.root)] = self._new(True)
        self._initial_dirs[self._ns[str(self.root)]] = {}
        for top, dirs, files in os.walk(self.root):
            parent = self._initial_dirs[self._ns[top]]
            for name in dirs:
                path = os.path.join(top, name)
                self._ns[path] = parent[name] = self._new(True)
                self._initial_dirs[self._ns[path]] = {}
            for name in files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                key = (st.st_dev, st.st_ino)
                if key not in by_inode:
                    by_inode[key] = self._new(False)
                    with open(path, "rb") as f:
                        self._initial_files[by_inode[key]] = f.read()
                self._ns[path] = parent[name] = by_inode[key]

    def _new(self, is_dir: bool) -> int:
        ino = len(self._is_dir) + 1
        self._is_dir[ino] = is_dir
        return ino

    # -- recording -------------------------------------------------------------------------

    def install(self) -> None:
        for name in _WRAPPED:
            self._real[name] = getattr(os, name)
            setattr(os, name, getattr(self, f"_{name}"))

    def uninstall(self) -> None:
        for name, real in self._real.items():
            setattr(os, name, real)
        self._real.clear()

    def begin(self) -> None:
        self.ops.append(Begin())

    def ack(self, *what: Any) -> None:
        self.ops.append(Ack(what))

    @contextmanager
    def step(self, *what: Any) -> Iterator[None]:
        """``begin``, the caller's call, then ``ack(*what)`` once it returned."""
        self.begin()
        yield
        self.ack(*what)

    def _path(self, path: Any) -> str | None:
        if isinstance(path, int):
            return None
        p = os.path.abspath(os.fsdecode(path))
        return p if p == str(self.root) or p.startswith(f"{self.root}/") else None

    def _entry(self, path: str, ino: int | None, step: int | None = None) -> None:
        parent, name = os.path.split(path)
        self.ops.append(Entry(self._ns[parent], name, ino, len(self.ops) if step is None
                              else step))

    def _open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        p = self._path(path)
        existed = p in self._ns if p else True
        fd = self._real["open"](path, flags, mode, dir_fd=dir_fd)
        if p is None:
            return fd
        assert dir_fd is None, f"dir_fd not modelled: {p}"
        if not existed:
            self._ns[p] = self._new(False)
            self._entry(p, self._ns[p])
        elif flags & os.O_TRUNC:
            raise AssertionError(f"O_TRUNC not modelled: {p}")
        self._fds[fd] = self._ns[p]
        return fd

    def _write(self, fd: int, data: Any) -> int:
        n = self._real["write"](fd, data)
        if fd in self._fds:
            self.ops.append(Write(self._fds[fd], bytes(data[:n])))
        return n

    def _close(self, fd: int) -> None:
        self._real["close"](fd)
        self._fds.pop(fd, None)

    def _fsync(self, fd: int) -> None:
        self._real["fsync"](fd)
        if fd in self._fds:
            self.ops.append(Sync(self._fds[fd]))

    def _fdatasync(self, fd: int) -> None:
        self._real["fdatasync"](fd)
        if fd in self._fds:
            self.ops.append(Sync(self._fds[fd]))

    def _rename(self, src: Any, dst: Any, **kw: Any) -> None:
        self._move("rename", src, dst, **kw)

    def _replace(self, src: Any, dst: Any, **kw: Any) -> None:
        self._move("replace", src, dst, **kw)

    def _move(self, call: str, src: Any, dst: Any, **kw: Any) -> None:
        s, d = self._path(src), self._path(dst)
        self._real[call](src, dst, **kw)
        if s is None and d is None:
            return
        assert s and d and not kw, f"a rename across the recorded root: {src} -> {dst}"
        ino = self._ns.pop(s)
        step = len(self.ops)
        self._entry(s, None, step)
        self._ns[d] = ino
        self._entry(d, ino, step)
        if self._is_dir[ino]:  # the subtree's live paths move with it
            for old in [k for k in self._ns if k.startswith(f"{s}/")]:
                self._ns[d + old[len(s):]] = self._ns.pop(old)

    def _link(self, src: Any, dst: Any, **kw: Any) -> None:
        s, d = self._path(src), self._path(dst)
        self._real["link"](src, dst, **kw)
        if s is None and d is None:
            return
        assert s and d and not kw, f"a link across the recorded root: {src} -> {dst}"
        self._ns[d] = self._ns[s]
        self._entry(d, self._ns[s])

    def _unlink(self, path: Any, *, dir_fd: Any = None) -> None:
        self._gone("unlink", path, dir_fd)

    def _remove(self, path: Any, *, dir_fd: Any = None) -> None:
        self._gone("remove", path, dir_fd)

    def _rmdir(self, path: Any, *, dir_fd: Any = None) -> None:
        self._gone("rmdir", path, dir_fd)

    def _gone(self, call: str, path: Any, dir_fd: Any) -> None:
        p = self._path(path) if dir_fd is None else None
        self._real[call](path, dir_fd=dir_fd)
        if p is not None:
            self._ns.pop(p)
            self._entry(p, None)

    def _mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: Any = None) -> None:
        p = self._path(path) if dir_fd is None else None
        self._real["mkdir"](path, mode, dir_fd=dir_fd)
        if p is not None:
            self._ns[p] = self._new(True)
            self._entry(p, self._ns[p])

    # -- crash states ----------------------------------------------------------------------

    def cuts(self) -> list[int]:
        """Every cut point: ``crash_state(k)`` is a power loss after ops[:k] (never
        inside one rename: the call is one step)."""
        ops = self.ops
        return [k for k in range(len(ops) + 1)
                if not (0 < k < len(ops) and isinstance(ops[k], Entry)
                        and isinstance(ops[k - 1], Entry) and ops[k].step == ops[k - 1].step)]

    def crash_state(self, cut: int, model: str, pick: Callable[[int, int], int],
                    keep_unsynced_data: bool) -> State:
        """The state after ``ops[:cut]`` under ``model``. ``pick(lo, hi)`` chooses how many
        namespace changes persisted where the model leaves it open (lo..hi: of the whole
        log under JOURNAL, of each directory's under PER_DIRECTORY); unsynced file bytes
        persist only with ``keep_unsynced_data``."""
        done = self.ops[:cut]
        entries = [(i, op) for i, op in enumerate(done) if isinstance(op, Entry)]
        if model == JOURNAL:
            kept = self._journal_prefix(done, entries, pick)
        elif model == PER_DIRECTORY:
            kept = self._per_directory(done, entries, pick)
        else:
            raise ValueError(f"unknown persistence model {model!r}")
        dirs = {ino: dict(names) for ino, names in self._initial_dirs.items()}
        for op in kept:
            names = dirs.setdefault(op.dir, {})
            if op.ino is None:
                names.pop(op.name, None)
            else:
                names[op.name] = op.ino
        last_sync = {op.ino: i for i, op in enumerate(done) if isinstance(op, Sync)}
        files = dict(self._initial_files)
        for i, op in enumerate(done):
            if isinstance(op, Write) and (keep_unsynced_data or i < last_sync.get(op.ino, -1)):
                files[op.ino] = files.get(op.ino, b"") + op.data
        acked = [op.what for op in done if isinstance(op, Ack)]
        began = [i for i, op in enumerate(done) if isinstance(op, Begin)]
        in_flight = None
        if began and not any(isinstance(op, Ack) for op in done[began[-1]:]):
            in_flight = next(op.what for op in self.ops[cut:] if isinstance(op, Ack))
        is_dir = frozenset(ino for ino, d in self._is_dir.items() if d)
        return State(ROOT, is_dir, dirs, files, acked, in_flight)

    @staticmethod
    def _journal_prefix(done: list[Op], entries: list[tuple[int, Entry]],
                        pick: Callable[[int, int], int]) -> list[Entry]:
        floor = 0  # entries[:floor] are committed by some directory's fsync
        for s, op in enumerate(done):
            if isinstance(op, Sync):
                floor = max([floor] + [k + 1 for k, (i, e) in enumerate(entries)
                                       if i < s and e.dir == op.ino])
        steps = [k for k in range(len(entries) + 1)  # cut points that split no rename
                 if k in (0, len(entries)) or entries[k][1].step != entries[k - 1][1].step]
        choices = [k for k in steps if k >= floor]
        n = choices[pick(0, len(choices) - 1)]
        return [e for _, e in entries[:n]]

    @staticmethod
    def _per_directory(done: list[Op], entries: list[tuple[int, Entry]],
                       pick: Callable[[int, int], int]) -> list[Entry]:
        last_sync = {op.ino: i for i, op in enumerate(done) if isinstance(op, Sync)}
        by_dir: dict[int, list[tuple[int, Entry]]] = {}
        for i, e in entries:
            by_dir.setdefault(e.dir, []).append((i, e))
        kept: list[tuple[int, Entry]] = []
        for ino, changes in by_dir.items():
            synced = sum(1 for i, _ in changes if i < last_sync.get(ino, -1))
            kept += changes[:pick(synced, len(changes))]
        return [e for _, e in sorted(kept, key=lambda ie: ie[0])]

    def crash_states(self, model: str, samples: int, seed: int = 0
                     ) -> list[tuple[int, str, State]]:
        """For every cut: nothing unsynced persisted, everything did, and ``samples``
        random choices (seeded)."""
        rng = random.Random(seed)
        out = []
        for cut in self.cuts():
            out.append((cut, "unsynced lost", self.crash_state(
                cut, model, lambda lo, hi: lo, False)))
            out.append((cut, "all persisted", self.crash_state(
                cut, model, lambda lo, hi: hi, True)))
            for s in range(samples):
                out.append((cut, f"sample {s}", self.crash_state(
                    cut, model, rng.randint, rng.random() < 0.5)))
        return out


# -- the promises ------------------------------------------------------------------------

REASONS = {"dead-letter": "broken input", "reject": "merge conflict", "cancel": "cancelled"}


def kept(kind: str, attempt: int, st: str, name: names.ItemName, q: Queue,
         finished: bool = True) -> bool:
    """Whether an item found at ``st``/``name`` after recovery keeps what the call
    ``kind`` (on ``attempt``) did; a call not ``finished`` may lack its reason."""
    settled = st == "done" or st == "failed" and not q.failure_reason(name.id).startswith("lost:")
    return {
        "enqueue": True,
        "claim": settled or name.attempt > attempt,  # the attempt was counted
        "complete": st == "done",
        "retry": settled or name.attempt > attempt,
        "promote": settled or st == "pending" and name.attempt >= attempt,
        "revoke": settled or name.attempt > attempt,
        "requeue": st != "failed" and name.attempt >= attempt,
    }[kind] if kind not in REASONS else (
        st == "failed" and (not finished or q.failure_reason(name.id) == REASONS[kind]))


def cut_short(places: list[tuple[str, names.ItemName]], claimed: set[int], q: Queue,
              every_unsynced_lost: bool) -> bool:
    """What a disk without a journal may also leave of the item whose move the power loss
    cut (a rename can persist at its source only, or at both ends): both done/ and failed/;
    and unless ``every_unsynced_lost`` (each move syncs its target before its source, so
    then the new name is there wherever the old one is gone): no name (held by ``ids/``
    alone or a stray staging name), a dead letter as lost, or pending/ at an attempt it
    was claimed at (that claim's source name came back)."""
    if sorted(st for st, _ in places) == ["done", "failed"]:
        return True
    if every_unsynced_lost:
        return False
    if not places:
        return True
    if len(places) != 1:
        return False
    st, name = places[0]
    return (st == "failed" and q.failure_reason(name.id).startswith("lost:")
            or st == "pending" and name.attempt in claimed)


def judge(q: Queue, acked: list[tuple[Any, ...]], in_flight: tuple[Any, ...] | None, *,
          journaled: bool, every_unsynced_lost: bool = False) -> set[tuple[str, str]]:
    """(promise, detail) for every promise of docs/protocol.md §7 that the recovered queue
    ``q`` breaks, given the calls ``acked`` (kind, id, arg) and the one ``in_flight`` when
    the power went. Without a journal the item whose move was in flight may also be
    :func:`cut_short`."""
    dest = q.root
    moving = in_flight[1] if in_flight and not journaled else None
    broken = {("consistent", str(v)) for v in check(dest)
              if not (v.item == moving and v.code in (
                  ("multiple-terminal",) if every_unsynced_lost else ("lost", "multiple-terminal")))}
    where: dict[str, list[tuple[str, names.ItemName]]] = {}
    for st, found in q.scan().items():
        for name in found:
            where.setdefault(name.id, []).append((st, name))
    last: dict[str, tuple[str, int]] = {}
    docs: dict[str, bytes] = {}
    claimed_at: dict[str, set[int]] = {}
    for kind, item_id, arg in acked:
        if kind == "enqueue":
            docs[item_id] = arg
        if kind == "claim":
            claimed_at.setdefault(item_id, set()).add(arg)
        last[item_id] = (kind, 0 if kind == "enqueue" else arg)
    for item_id, (kind, attempt) in last.items():
        places = where.get(item_id, [])
        if item_id == moving and cut_short(places, claimed_at.get(item_id, set()), q,
                                           every_unsynced_lost):
            continue
        if len(places) != 1:  # breaks the enqueue's promise and that of the last call
            for promise in {"enqueue", kind}:
                broken.add((promise, f"{item_id}: names {places} after {kind}"))
            continue
        st, name = places[0]
        if (dest / st / str(name)).read_bytes() != docs[item_id]:
            broken.add(("enqueue", f"{item_id}: its bytes changed ({st}/{name})"))
        if kept(kind, attempt, st, name, q):
            continue
        if in_flight and in_flight[1] == item_id and kept(
                in_flight[0], in_flight[2], st, name, q, finished=False):
            continue  # the next call on it had started: its outcome may be there instead
        broken.add((kind, f"{item_id}: {st}/{name} after {kind} of attempt {attempt}"))
    return broken


def materialize(state: State, dest: Path) -> None:
    """Write ``state`` under ``dest`` (which must not exist): directories, each file once,
    its other names hard links to it."""
    first: dict[int, str] = {}
    seen_dirs: set[int] = set()

    def fill(ino: int, path: str) -> None:
        seen_dirs.add(ino)
        os.mkdir(path)
        for name, child in sorted(state.dirs.get(ino, {}).items()):
            target = os.path.join(path, name)
            if child in state.dir_inodes:
                if child not in seen_dirs:  # a directory whose move persisted at both ends
                    fill(child, target)
            elif child in first:
                os.link(first[child], target)
            else:
                with open(target, "wb") as f:
                    f.write(state.files.get(child, b""))
                first[child] = target

    fill(state.root, str(dest))
