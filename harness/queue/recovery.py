"""Bring a queue back to a consistent state after crashes: ``recover()``.

Idempotent, and safe to run while workers claim and complete (the
coordinator runs it at start with adopted workers alive). It must not run
concurrently with another recovery, revoke or promote: those are the single
coordinator's job. What each crash point leaves and how this resolves it is
tabulated in docs/protocol.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Final

from harness.queue import bulk, fsops, names
from harness.queue.item import InvalidItem, load
from harness.queue.names import ItemName
from harness.queue.core import DuplicateId, Queue

STAGING_DEBRIS_AGE: Final = 60.0  # seconds; a sidecar being written is done in microseconds
DROP_SETTLE_AGE: Final = 2.0  # seconds unchanged before a hand-dropped file is taken in


def recover(queue: Queue, *, revoke_claims: bool = False) -> list[str]:
    """Repair ``queue``; return one line per change made.

    ``revoke_claims`` also returns every claim to pending/ (use only when no
    worker can be alive, e.g. ``fsck --repair`` on a stopped workspace) and looks
    at every live entry for junk; otherwise only claimed/ is swept (a worker's claim
    or promote moves junk in pending/ and waiting/ aside when it meets it). Junk
    moved aside is reported through ``queue.on_junk``, not in the returned lines.
    """
    actions: list[str] = []
    _finish_staged(queue, actions)
    for state in ("pending", "claimed", "waiting") if revoke_claims else ("claimed",):
        _junk_named(queue, state)
    for state in ("pending", "claimed", "waiting"):
        _adopt_foreign(queue, state, actions)
    _dedupe_and_dead_letter_lost(queue, actions)
    _fix_reasons(queue, actions)
    if revoke_claims:
        for entry in names.entries(queue.dir("claimed")):
            outcome = queue.revoke(entry, "recovered: no live owner")
            actions.append(f"revoked claimed/{entry}: {outcome}")
    return actions


def _finish_staged(queue: Queue, actions: list[str]) -> None:
    """Roll forward enqueues that crashed after staging; drop stale sidecar staging."""
    tmp = queue.dir("tmp")
    for entry in os.listdir(tmp):
        path = tmp / entry
        if bulk.is_batch(entry) and os.path.isdir(path) and not os.path.islink(path):
            actions += bulk.recover_batch(queue.root, path,
                                          lambda p, e: _roll_forward(queue, p, e))
            continue
        if entry.startswith("."):
            if _older_than(path, STAGING_DEBRIS_AGE) and fsops.unlink_quiet(path):
                actions.append(f"removed stale staging file tmp/{entry}")
            continue
        if fsops.is_regular(path) is False:
            queue.junk(path, _kind(path))
            continue
        try:
            fd = os.open(path, os.O_RDWR)  # NFS emulates flock with fcntl locks: needs write
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # an enqueue in progress holds it
            continue
        try:
            actions.append(_roll_forward(queue, path, entry))
        finally:
            os.close(fd)


def _roll_forward(queue: Queue, path: Path, entry: str) -> str:
    name = names.parse_staged(entry)
    if name is None:
        return _dead_letter_file(queue, path, entry, "not a queue name in tmp/")
    reservation = queue.dir("ids") / name.id
    try:
        os.link(path, reservation)
    except FileExistsError:
        if not fsops.same_file(path, reservation):
            os.unlink(path)  # never acknowledged: the enqueuer crashed before learning it lost
            return f"dropped unacknowledged duplicate enqueue tmp/{entry}"
    if os.stat(path).st_nlink == 2:  # only tmp/ and ids/: no queue name yet
        state = "waiting" if name.due == names.DEP else "pending"
        try:
            os.link(path, queue.dir(state) / str(name))
        except FileExistsError:
            pass
    os.unlink(path)
    return f"finished interrupted enqueue of {name.id!r}"


def _kind(path: Path) -> str:
    try:
        return fsops.kind_of(os.lstat(path).st_mode)
    except FileNotFoundError:
        return "gone"


def _junk_named(queue: Queue, state: str) -> None:
    """Move entries with queue names that are not regular files aside.

    Streamed: the directory entry's type (d_type) screens, an lstat confirms.
    """
    with os.scandir(queue.dir(state)) as it:
        for e in it:
            if e.name[:1] == "." or e.name.endswith(names.REASON_SUFFIX) \
                    or e.is_file(follow_symlinks=False):
                continue
            path = queue.dir(state) / e.name
            if fsops.is_regular(path) is False and f"{state}/{e.name}" not in queue.stuck:
                queue.junk(path, _kind(path))


def adopt_dropped(queue: Queue, settle: float = DROP_SETTLE_AGE) -> list[str]:
    """Take in files dropped by hand into pending/, claimed/ or waiting/ while the queue
    runs, as :func:`recover` does at start: enqueue them, or dead-letter them with the
    reason. For the coordinator's tick (paced by its cost there); workers never touch
    such files, and without this a batch run would wait for them forever.

    A file changed within ``settle`` seconds may still be being written: it is left for a
    later call. Only entries that are not queue names are looked at (``names.foreign``: a
    screen, no parse per name), so a call costs about the listing of the directories.
    """
    actions: list[str] = []
    for state in ("pending", "claimed", "waiting"):
        _adopt_foreign(queue, state, actions, settle)
    return actions


def _adopt_foreign(queue: Queue, state: str, actions: list[str], settle: float = 0.0) -> None:
    """Enqueue hand-dropped item files properly, or dead-letter them with the reason."""
    chunked = names.chunks(queue.dir(state), names.TICK_CHUNK)
    for entry in (e for chunk in chunked for e in names.foreign(chunk)):
        if f"{state}/{entry}" in queue.stuck:
            continue
        path = queue.dir(state) / entry
        if settle and not _older_than(path, settle):
            continue
        try:
            item = load(fsops.read_regular(path), f"{state}/{entry}")
            if state != "pending":
                raise InvalidItem(f"{state}/{entry}", "files may be dropped only into pending/")
            # An id derived from this very file (name and inode) makes adoption
            # idempotent: a crash after the enqueue and before the unlink is found as
            # a duplicate below, while a new file dropped under the same name later
            # gets a new id.
            item = item.model_copy(update={"id": item.id or _id_from_file(path)})
            name = queue.enqueue(item, source=f"{state}/{entry}")
        except FileNotFoundError:
            continue
        except fsops.NotAFile as exc:
            queue.junk(path, exc.kind)
            continue
        except DuplicateId as exc:
            if _already_adopted(queue, item):
                _remove_adopted(queue, path)
                actions.append(f"removed {state}/{entry}: adopted before a crash")
            else:
                actions.append(_dead_letter_file(queue, path, entry, str(exc)))
            continue
        except (InvalidItem, OSError) as exc:
            actions.append(_dead_letter_file(queue, path, entry, str(exc)))
            continue
        _remove_adopted(queue, path)
        actions.append(f"enqueued hand-dropped {state}/{entry} as {name}")


def _remove_adopted(queue: Queue, path: Path) -> None:
    """Unlink a hand-dropped file whose copy is enqueued; one that cannot be unlinked
    (immutable) is junk, so it is not taken in again at every scan."""
    try:
        os.unlink(path)
    except PermissionError as exc:
        queue.junk(path, f"taken into the queue, but it cannot be removed ({exc.strerror})")


def _id_from_file(path: Path) -> str:
    st = os.stat(path)
    tag = hashlib.sha1(f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}".encode()).hexdigest()[:8]
    # Dots dropped too: "a..b" or "x.lock" would be valid file names but not valid ids.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.name.rsplit(".json", 1)[0]).strip("-_")
    return names.validate_id(f"{(stem or 'item')[:100]}-{tag}")


def _already_adopted(queue: Queue, item: Any) -> bool:
    """True if ids/<id> holds this very document (same fields but the enqueue stamp)."""
    try:
        existing = load(fsops.read_regular(queue.dir("ids") / item.id), item.id)
    except (OSError, InvalidItem, fsops.NotAFile):
        return False
    keep = lambda it: it.model_dump(exclude={"enqueued_at"})  # noqa: E731
    return keep(existing) == keep(item)


def _dead_letter_file(queue: Queue, path: Path, entry: str, reason: str) -> str:
    """Move a foreign file into failed/ under a free name (link: never overwrite).

    A file this process may not link (another user's, under fs.protected_hardlinks;
    an immutable one) goes to junk/ instead, by rename, or is left in place.
    """
    for n in range(1000):
        dst = queue.dir("failed") / (entry if n == 0 else f"{entry}.{n}")
        try:
            os.link(path, dst)
        except FileExistsError:
            continue
        except PermissionError as exc:
            queue.junk(path, f"{reason}; it cannot be linked into failed/ ({exc.strerror})")
            return f"{path.parent.name}/{entry}: {reason} (junk: cannot be linked)"
        os.unlink(path)
        queue.write_reason(dst, reason)
        return f"moved {path.parent.name}/{entry} to failed/{dst.name}: {reason}"
    raise RuntimeError(f"{path}: no free name in failed/")


def _dedupe_and_dead_letter_lost(queue: Queue, actions: list[str]) -> None:
    """Leave each id one name, and put ids with no name left into failed/.

    Every genuine name of an item is a hard link to ``ids/<id>`` (one inode per
    item, §1 of docs/protocol.md), so the reservation's link count says which ids
    need a look, without listing any state directory: 2 is the one name (or a
    staged enqueue), ``>= 3`` two names or an enqueue publishing (*suspect*), 1 no
    name (*lost*, unless a hand-made copy carries the id). One streaming pass over
    ids/ (an lstat each) finds the suspects; only when there are some, the state
    directories are read once per ``names.CHUNK`` of them, keeping the names of
    those ids alone. So memory holds a chunk of suspects, never every name.
    """
    suspects: dict[str, int] = {}
    with os.scandir(queue.dir("ids")) as it:
        for e in it:
            if e.name[:1] == ".":
                continue
            try:
                nlink = e.stat(follow_symlinks=False).st_nlink
            except FileNotFoundError:
                continue
            if nlink != 2:
                suspects[e.name] = nlink
                if len(suspects) >= names.CHUNK:
                    _resolve(queue, suspects, actions)
                    suspects.clear()
    if suspects:
        _resolve(queue, suspects, actions)


def _resolve(queue: Queue, suspects: dict[str, int], actions: list[str]) -> None:
    """Find the suspects' names (``{id: st_nlink}``) in the state directories: dedupe
    those with several, dead-letter those with none and one link.

    A name that moves during the directory scans may be seen twice (each unlink is
    checked again at the moment of use) or not at all (a name is only missed if it
    exists under another one, so the id's link count is above 1 and nothing is done).
    """
    held = _names_of(queue, suspects)
    for item_id, nlink in suspects.items():
        found = held.get(item_id, [])
        if len(found) > 1:
            _keep_one(queue, item_id, found, actions)
        elif not found and nlink == 1:
            _dead_letter_lost(queue, item_id, actions)


def _names_of(queue: Queue, ids: dict[str, int]) -> dict[str, list[tuple[str, ItemName]]]:
    """The parsed names in the five state directories whose id is one of ``ids``."""
    held: dict[str, list[tuple[str, ItemName]]] = defaultdict(list)
    for state in names.STATES:
        for chunk in names.chunks(queue.dir(state)):
            for entry in chunk:
                # The id sits between the 19th character and the first "~" after it in
                # every name; a slice screens in a fraction of a parse.
                if entry[19:entry.find("~", 19)] in ids:
                    parsed = names.try_parse(entry)
                    if parsed is not None and parsed.id in ids:
                        held[parsed.id].append((state, parsed))
    return held


def _rank(state: str, name: ItemName) -> tuple[int, int, int]:
    terminal = state in ("done", "failed")
    return (terminal, name.attempt, state == "claimed")


def _keep_one(queue: Queue, item_id: str, held: list[tuple[str, ItemName]],
              actions: list[str]) -> None:
    """Of the names in ``held`` that are links to ``ids/<id>``, keep the highest ranked
    and unlink the other live ones.

    Copies (other inodes) are neither kept nor removed: ranking one above the genuine
    names would unlink every link of the item in favour of a file the protocol never
    made (fsck reports it as ``not-same-item``). Two terminal names are left alone.
    """
    reservation = queue.dir("ids") / item_id
    held = sorted((sn for sn in held
                   if fsops.same_file(queue.dir(sn[0]) / str(sn[1]), reservation)),
                  key=lambda sn: _rank(*sn), reverse=True)
    if len(held) < 2:
        return
    keep_state, keep = held[0]
    for state, name in held[1:]:
        if state in ("done", "failed"):
            continue  # two terminal names need a human; fsck reports them
        path = queue.dir(state) / str(name)
        if fsops.same_file(path, reservation) and fsops.unlink_quiet(path):
            actions.append(f"removed {state}/{name}: superseded by {keep_state}/{keep}")


def _dead_letter_lost(queue: Queue, item_id: str, actions: list[str]) -> None:
    """An id whose reservation is its only link has no name anywhere: put it in failed/.

    The link count is read again at the moment of use: the scan's may be seconds old.
    No protocol step gives a lost id a name back, but a hand-made link can.
    """
    path = queue.dir("ids") / item_id
    try:
        if os.lstat(path).st_nlink != 1:
            return
        item = load(fsops.read_regular(path), f"ids/{item_id}")
    except FileNotFoundError:
        return
    except fsops.NotAFile as exc:
        queue.junk(path, exc.kind)
        return
    except InvalidItem:
        item = None
    order = f"{int((item.enqueued_at if item else 0) * 1e9):016x}"
    prio = item.priority if item else names.DEFAULT_PRIORITY
    dst = queue.dir("failed") / str(ItemName(prio, order, item_id, 1))
    try:
        os.link(path, dst)
    except FileExistsError:
        return
    queue.write_reason(dst, "lost: the item had no queue name left (removed by hand, or a"
                            " power loss during a move on a disk that does not journal"
                            " directories);"
                            f" `parallel-harness retry {item_id}` requeues it")
    actions.append(f"dead-lettered lost item {item_id!r} as failed/{dst.name}")


def _fix_reasons(queue: Queue, actions: list[str]) -> None:
    """Remove reasons whose item is gone; give each failed/ entry without one a reason.

    Streamed: the partner of each entry is looked up (an lstat), not remembered. A
    reason this writes may be met later in the scan; its item is there, so it stays.
    """
    failed = queue.dir("failed")
    with os.scandir(failed) as it:
        for e in it:
            entry = e.name
            if entry[:1] == ".":
                continue
            if entry.endswith(names.REASON_SUFFIX):
                if not os.path.lexists(failed / entry.removesuffix(names.REASON_SUFFIX)):
                    fsops.unlink_quiet(failed / entry)
                    actions.append(f"removed orphan reason file failed/{entry}")
            elif not os.path.lexists(failed / (entry + names.REASON_SUFFIX)):
                queue.write_reason(failed / entry, "no reason recorded (crashed before"
                                   " writing it)", replace=False)
                actions.append(f"wrote missing reason for failed/{entry}")


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except FileNotFoundError:
        return False
