"""The lock-free filesystem work queue.

Every state change of an item is one ``link`` or ``rename`` of one name
(see docs/protocol.md for the state machine and the crash analysis of each
step). All names of an item are hard links to one immutable inode:
``ids/<id>`` (the uniqueness reservation) plus exactly one live or terminal
name in ``pending/``, ``claimed/``, ``waiting/``, ``done/`` or ``failed/``.

This module knows nothing of git, agents, heartbeats or the CLI. A caller
that needs the owner of a claim recorded (the worker's heartbeat) passes
``on_claim``; it runs right after the claim rename.
"""

from __future__ import annotations

import bisect
import heapq
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from harness.queue import bulk, failpoints, fsops, names, watch
from harness.queue.item import InvalidItem, Item, document, load, validate
from harness.queue.names import ItemName

STATES: Final = names.STATES
JUNK: Final = "junk"  # entries that are not item files, moved aside with a reason
DIRS: Final = ("tmp", "ids", *STATES, JUNK)
WINDOW: Final = 65536  # the claimant keeps at least this many of pending/'s smallest names...
WINDOW_SHARE: Final = 16  # ...or 1/16 of the listing, so a relist is paid once per 1/16 of it
LIST_PACE: Final = 100  # a fallback relist waits at least 100 x what the last listing cost
RESCAN_FLOOR: Final = 5.0  # seconds: a claimant with a watch still lists this often (NFS)

_fp_enqueue_staged = failpoints.define(
    "enqueue.after-stage", "item written and locked in tmp/; id not reserved")
_fp_enqueue_reserved = failpoints.define(
    "enqueue.after-reserve", "ids/<id> linked; no pending/ or waiting/ name yet")
_fp_enqueue_published = failpoints.define(
    "enqueue.after-publish", "pending/ (or waiting/) name linked; tmp/ name not yet removed")
_fp_claim_renamed = failpoints.define(
    "claim.after-rename", "pending/N renamed to claimed/N; owner not recorded")
_fp_claim_recorded = failpoints.define(
    "claim.after-record", "owner recorded; item not yet read by the claimant")
_fp_complete_before = failpoints.define(
    "complete.before-rename", "work finished; claimed/N not yet renamed to done/")
_fp_complete_after = failpoints.define(
    "complete.after-rename", "done/N in place; caller not yet told")
_fp_fail_before = failpoints.define(
    "fail.before-rename", "attempt failed; claimed/N not yet moved to waiting/ or failed/")
_fp_fail_after = failpoints.define(
    "fail.after-rename", "moved to failed/N; reason file not yet written")
_fp_revoke_after = failpoints.define(
    "revoke.after-rename", "claimed/N renamed to the next attempt or failed/; no reason yet")
_fp_promote_before = failpoints.define(
    "promote.before-rename", "waiting/N is due; not yet renamed to pending/")


class QueueError(Exception):
    """Base class; ``path`` is the file the operation was about."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class DuplicateId(QueueError):
    """The id is already in the queue (in any state, done and failed included)."""


class UnknownDependency(InvalidItem):
    """An item's ``depends_on`` names an id that is not in the queue (or its own)."""


class Fenced(QueueError):
    """The claim was revoked: this attempt no longer owns the item and must record nothing."""


Outcome = Literal["retry", "failed"]
RevokeResult = Literal["retry", "failed", "lost", "junk"]


class Unusable(QueueError):
    """The claimed item's file is malformed, not a regular file or unreadable; it has
    already been dead-lettered, moved to junk/ or given back (counted). Claim another."""


class Claim:
    """Ownership of one attempt of one item, proven by the name ``claimed/<name>``.

    ``item`` is the document, read and validated on first use (``Queue.claim`` does so
    unless ``read=False``): ownership is the rename alone, and the file is immutable, so
    reading it later reads the same bytes. (A plain class with slots: a frozen
    dataclass cost a microsecond per claim to build.)
    """

    __slots__ = ("queue", "name", "_item")

    def __init__(self, queue: Queue, name: ItemName, item: Item | None = None) -> None:
        self.queue, self.name, self._item = queue, name, item

    def __repr__(self) -> str:
        return f"Claim({self.name})"

    @property
    def item(self) -> Item:
        """The item document. Raises Unusable (the item was disposed of, see the class)
        or Fenced (the claim was revoked before the first read)."""
        if self._item is None:
            self._item = self.queue._load_claimed(self.name)
        return self._item

    @property
    def id(self) -> str:
        return self.name.id

    @property
    def attempt(self) -> int:
        return self.name.attempt

    @property
    def path(self) -> Path:
        return self.queue.root / "claimed" / str(self.name)

    def is_live(self) -> bool:
        """True while the claim has not been revoked (a cheap check between work steps)."""
        return self.path.exists()

    def complete(self) -> Path:
        """Record success: one rename of claimed/N to done/N. Raises Fenced if revoked."""
        return self.queue._complete(self)

    def fail(self, reason: str, *, retry: bool = True) -> Outcome:
        """Record failure: retry later (waiting/, attempt+1) or dead-letter (failed/).

        Retries until the item's ``max_attempts``; ``retry=False`` dead-letters at
        once. Raises Fenced if the claim was revoked meanwhile.
        """
        return self.queue._fail(self, reason, retry=retry)

    def release(self, delay: float) -> None:
        """Give the item back without counting this attempt (e.g. the agent hit a rate limit).

        It waits ``delay`` seconds in waiting/ at the next attempt, marked free.
        Raises Fenced if the claim was revoked meanwhile.
        """
        due = int((self.queue.clock() + delay) * 1000)
        self.queue._move_claim(self, self.queue.dir("waiting") / str(
            self.name.with_attempt(self.attempt + 1, due, free=True)))


@dataclass
class Queue:
    """A queue rooted at ``root`` (a workspace's ``queue/`` directory).

    ``clock`` gives wall time in seconds (due times are persisted, so they are
    wall-clock); tests inject one. A claimant caches a window of the smallest
    names of pending/ (at least ``window``); every ``relist_interval`` it takes in
    the names added since (from an inotify watch, else by listing again, paced by
    what a listing costs), so a new high-priority item is seen within that time
    (``relist_interval <= 0``: every claim lists afresh). ``on_junk`` hears, once per
    entry, of every entry moved to junk/ (or that could not be moved).
    """

    root: Path
    durable: bool = False
    max_attempts: int = 3
    backoff_base: float = 5.0
    backoff_max: float = 300.0
    clock: Callable[[], float] = time.time
    relist_interval: float = 0.25
    shared: bool = False  # a team's queue: directories 2770, files 0660 (else 0700 / 0600)
    on_junk: Callable[[str], None] | None = field(default=None, repr=False)
    stuck: set[str] = field(default_factory=set, repr=False)  # "state/entry" junk left in place
    waiting_seen: list[ItemName] = field(default_factory=list, repr=False)  # by promote()
    window: int = WINDOW  # at least this many of pending/'s smallest names are cached
    _cache: list[str] = field(default_factory=list, repr=False)  # a window of pending/, sorted
    _pos: int = field(default=0, repr=False)  # the next candidate in _cache
    _bound: str | None = field(default=None, repr=False)  # last name of a partial window
    _watch: watch.DirWatch | None = field(default=None, repr=False)
    _checked_at: float = field(default=-1e9, repr=False)  # last look for new names
    _listed_at: float = field(default=-1e9, repr=False)
    _list_cost: float = field(default=0.0, repr=False)  # seconds the last listing took

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.file_mode = 0o660 if self.shared else 0o600
        for d in ("", *DIRS):
            path = self.root / d
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.shared:
                try:
                    os.chmod(path, 0o2770)  # setgid: new entries keep the group
                except PermissionError:
                    pass  # another member's directory: its owner set it up
        # Plain strings for the claim path: building Path objects cost a quarter of a claim.
        self._pending, self._claimed = f"{self.root}/pending/", f"{self.root}/claimed/"

    def dir(self, state: str) -> Path:
        return self.root / state

    def probe(self) -> None:
        """Refuse (UnsupportedFilesystem) unless link/rename/O_EXCL/fsync work here."""
        fsops.probe(self.root, list(DIRS[1:]))

    # -- enqueue -------------------------------------------------------------

    def enqueue(self, data: Item | dict[str, Any], source: str = "item") -> ItemName:
        """Validate and publish one item; return its name.

        Raises InvalidItem (bad document, unknown dependency) or DuplicateId.
        The id reservation is a ``link`` into ids/, so two processes enqueueing
        one id at once get exactly one success, and an id stays taken after
        the item is done or failed.
        """
        name, doc = self.prepare(data, source)
        staged = self.root / "tmp" / names.staged_name(name)
        # Written and locked under a dot-name, then renamed into view: recover()
        # rolls a staged file forward only once it can take the lock, i.e. once this
        # enqueuer is gone, and never sees a file that is not yet locked or complete.
        hidden = staged.with_name(f".{staged.name}")
        fd = fsops.write_new(hidden, doc, durable=self.durable, lock=True, mode=self.file_mode)
        try:
            os.rename(hidden, staged)
            _fp_enqueue_staged()
            self._publish(staged, name, source)
        finally:
            os.close(fd)
        return name

    def prepare(self, data: Item | dict[str, Any], source: str = "item"
                ) -> tuple[ItemName, bytes]:
        """The name and file bytes an item is enqueued with (validated, stamped; see
        ``item.document``). Raises InvalidItem, UnknownDependency (a subclass) when a
        dependency is not (yet) in ids/."""
        item = validate(data, source)
        item_id, doc = document(item, source)
        for dep in item.depends_on:
            if dep == item_id or not os.path.exists(f"{self.root}/ids/{dep}"):
                raise UnknownDependency(source, f"depends_on: unknown item {dep!r}"
                                                " (enqueue it first)")
        name = ItemName(item.priority, names.next_order(), item_id, 1,
                        names.DEP if item.depends_on else None)
        return name, doc

    def batch(self, *, atomic: bool = False) -> bulk.Batch:
        """A bulk enqueue (queue/bulk.py): one staging directory and lock for many items."""
        return bulk.Batch(self.root, atomic=atomic, durable=self.durable, mode=self.file_mode)

    def _publish(self, staged: Path, name: ItemName, source: str) -> None:
        try:
            os.link(staged, self.root / "ids" / name.id)
        except FileExistsError:
            os.unlink(staged)
            raise DuplicateId(self.root / "ids" / name.id,
                              f"{source}: id {name.id!r} is already in the queue") from None
        _fp_enqueue_reserved()
        # The reservation is on disk before the item can be seen: on a disk that does not
        # journal directories a power loss then never leaves a name without its ids/ entry
        # (which a second enqueue of the id would not see). No more fsyncs than after both.
        self._sync("ids")
        state = "waiting" if name.due == names.DEP else "pending"
        os.link(staged, self.dir(state) / str(name))
        self._sync(state)
        _fp_enqueue_published()
        os.unlink(staged)

    # -- claim ---------------------------------------------------------------

    def claim(self, on_claim: Callable[[ItemName], None] | None = None, *,
              read: bool = True) -> Claim | None:
        """Claim the first claimable pending item in (priority, order); None if there is none.

        ``rename(pending/N, claimed/N)``: ENOENT means another claimant (or a
        revoke) moved the name first, so move on. Then ``on_claim(N)`` records
        the owner. With ``read`` (the default) the item is read and validated
        here, and one that cannot be (malformed, junk, unreadable) is disposed of
        and the next one tried; with ``read=False`` that happens on the first use
        of ``Claim.item``, which then raises Unusable.

        Why rename and not ``link`` + ``unlink``: link(2) looks its source up
        before it locks the target directory, so a claimant with a stale lookup
        can re-create claimed/N after the winner has unlinked pending/N and
        moved claimed/N on (a ghost claim of a finished or revoked attempt, seen
        in tests/test_hammer.py). rename(2) looks both names up under the
        directory locks, and the claim is one step with no two-name window.

        Candidates come from a window of the smallest names of pending/ (see
        docs/protocol.md §3, claim): a full pass over a fresh complete listing
        that finds nothing returns None.
        """
        relisted = raced = self._stale()
        if relisted:
            self._relist()
        while True:
            if self._pos >= len(self._cache):
                # Done with a fresh listing: it held everything, or nobody else took any
                # of its names (a window of foreign names must not spin here).
                if relisted and (self._bound is None or not raced):
                    return None
                self._relist()
                relisted, raced = True, False
                continue
            entry = self._cache[self._pos]
            self._pos += 1
            name = names.try_parse(entry)
            if name is None:
                continue  # hand-dropped: recover() adopts or dead-letters it
            claim = self._try_claim(name, on_claim, entry)
            if claim is None:
                raced = True
                self._skip_taken()
            elif not read or _readable(claim):
                return claim

    def _stale(self) -> bool:
        """True when the window must be listed afresh; merges watched additions otherwise.

        Every ``relist_interval`` the claimant looks for names added to pending/: from
        its inotify watch when it has one (exact, and free of the directory's size),
        else by listing, paced so a listing takes at most 1/LIST_PACE of the time.
        A watch is still backed by a listing every ``rescan_every`` (NFS: names added
        by other hosts raise no event here).
        """
        now = time.monotonic()
        if self.relist_interval <= 0:
            return True
        if now - self._checked_at <= self.relist_interval:
            return False
        since_listing = now - self._listed_at
        added = self._watch.added() if self._watch is not None else None
        if added is None:
            return since_listing > max(self.relist_interval, LIST_PACE * self._list_cost)
        self._checked_at = now
        for entry in added:
            self._add_candidate(entry)
        return since_listing > self.rescan_every

    @property
    def rescan_every(self) -> float:
        return max(RESCAN_FLOOR, LIST_PACE * self._list_cost)

    def _add_candidate(self, entry: str) -> None:
        """Put a name added to pending/ into the window, in order, unless it lies beyond
        the window's end (then a later listing finds it) or is there already."""
        if entry[:1] == "." or entry.endswith(names.REASON_SUFFIX):
            return
        if self._bound is not None and entry > self._bound:
            return
        at = bisect.bisect_left(self._cache, entry, self._pos)
        if at == len(self._cache) or self._cache[at] != entry:
            self._cache.insert(at, entry)

    def _relist(self) -> None:
        """List pending/ and keep its smallest names: all of them, or a window of
        max(WINDOW, 1/WINDOW_SHARE of them), whose last name is ``_bound``.

        The watch is opened (or drained) before the listing: a name added during
        the listing is then in the listing, or in the next ``added()``, or both.
        """
        start = time.monotonic()
        if self.relist_interval > 0:
            if self._watch is None or not self._watch.alive:
                self._watch = watch.DirWatch(self._pending)
            else:
                self._watch.added()
        listed = names.entries(self._pending)
        size = max(self.window, len(listed) // WINDOW_SHARE)
        if len(listed) > size:
            self._cache = _smallest(listed, size)
            self._bound = self._cache[-1]
        else:
            self._cache, self._bound = sorted(listed), None
        self._pos = 0
        self._listed_at = self._checked_at = time.monotonic()
        self._list_cost = self._listed_at - start

    def _skip_taken(self) -> None:
        """After a lost rename, drop cached names that other claimants already took.

        Claimants walk the same sorted listing, so a loser usually trails the
        winners by many names; a stat takes no rename lock, a failed rename does
        (it cost 6.5 lost renames per claim at 8 processes). A name gone from
        pending/ never comes back, so skipping it cannot lose an item.
        """
        cache, pending, lexists = self._cache, self._pending, os.path.lexists
        # Taken names form a run from the head (claimants go in order), so gallop over it
        # (1, 2, 4, ... ahead) and then bisect the last step: O(log run) stats, where a
        # walk took one per name (7 per claim at 8 processes). A name still pending that
        # the bisection steps over is not lost: it is in the next listing.
        lo, step = self._pos, 1
        while lo < len(cache) and not lexists(pending + cache[lo]):
            self._pos, lo, step = lo + 1, lo + step, step * 2
        hi = min(lo, len(cache))
        lo = self._pos
        while lo < hi:  # cache[_pos - 1] is taken; cache[hi] exists (or is the end)
            mid = (lo + hi) // 2
            if lexists(pending + cache[mid]):
                hi = mid
            else:
                lo = mid + 1
        self._pos = lo

    def _try_claim(self, name: ItemName, on_claim: Callable[[ItemName], None] | None,
                   entry: str | None = None) -> Claim | None:
        """One rename of pending/N to claimed/N (and the owner's record); None if lost.
        ``entry`` is ``str(name)`` when the caller has it."""
        entry = entry or str(name)
        try:
            os.rename(self._pending + entry, self._claimed + entry)
        except FileNotFoundError:
            return None
        if self.durable:
            # One fsync: a rename is one journal transaction on ext4/XFS, so syncing the
            # new name's directory persists both. Where it is not, a power loss can leave
            # pending/N and claimed/N on one inode, which recover() resolves (claimed wins).
            self._sync("claimed")
        _fp_claim_renamed()
        if on_claim is not None:
            on_claim(name)
        _fp_claim_recorded()
        return Claim(self, name)

    def _load_claimed(self, name: ItemName) -> Item:
        """Read and validate claimed/N for its Claim; dispose of it if it cannot be used.

        Malformed: dead-lettered with the reason. Not a regular file: moved to junk/.
        Another read error (EIO, ESTALE: may pass): revoked, counted. Each raises
        Unusable. Gone (revoked meanwhile): Fenced.
        """
        dst = self._claimed + str(name)
        try:
            return load(fsops.read_regular(dst), dst)
        except FileNotFoundError:
            raise Fenced(dst, f"attempt {name.attempt} of {name.id!r} was revoked before"
                              " its item was read") from None
        except fsops.NotAFile as exc:
            self.junk(Path(dst), exc.kind)
            raise Unusable(dst, f"not a regular file ({exc.kind})") from None
        except InvalidItem as exc:
            self._dead_letter(Path(dst), name, f"malformed item: {exc}")
            raise Unusable(dst, f"malformed item: {exc}") from None
        except OSError as exc:  # EIO, ESTALE: may pass; retry later, counted
            self.revoke(name, f"could not read the item: {exc}")
            raise Unusable(dst, f"could not read the item: {exc}") from None

    # -- outcomes ------------------------------------------------------------

    def _complete(self, claim: Claim) -> Path:
        _fp_complete_before()
        dst = self.dir("done") / str(claim.name)
        self._move_claim(claim, dst)
        _fp_complete_after()
        return dst

    def _fail(self, claim: Claim, reason: str, *, retry: bool) -> Outcome:
        _fp_fail_before()
        limit = claim.item.max_attempts or self.max_attempts
        if retry and claim.name.counted < limit:
            due = int((self.clock() + self.backoff(claim.attempt)) * 1000)
            self._move_claim(claim, self.dir("waiting") / str(claim.name.with_attempt(
                claim.attempt + 1, due)))
            return "retry"
        dst = self.dir("failed") / str(claim.name)
        self._move_claim(claim, dst)
        _fp_fail_after()
        self.write_reason(dst, reason)
        return "failed"

    def _move_claim(self, claim: Claim, dst: Path) -> None:
        try:
            os.rename(claim.path, dst)
        except FileNotFoundError:
            raise Fenced(claim.path, f"attempt {claim.attempt} of {claim.id!r} was revoked;"
                         " its outcome is not recorded") from None
        self._sync(dst.parent.name, "claimed")

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` may start: exponential, capped."""
        return min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))

    # -- coordinator operations ---------------------------------------------

    def revoke(self, name: ItemName | str, reason: str, *, count: bool = True) -> RevokeResult:
        """Take a claim back from a dead or stale owner.

        One rename of claimed/N to pending/ at the next attempt, or to failed/
        when attempts are used up. Races safely with the owner's completion:
        both rename claimed/N, exactly one wins; "lost" means the owner's did.
        ``count=False`` (a graceful shutdown) never dead-letters and marks the
        attempt free: it was not the item's fault.
        """
        entry = str(name)
        src = self.dir("claimed") / entry
        parsed = names.parse(entry)
        try:
            limit = load(fsops.read_regular(src), str(src)).max_attempts or self.max_attempts
        except FileNotFoundError:
            return "lost"
        except fsops.NotAFile as exc:
            return "junk" if self.junk(src, exc.kind) else "lost"
        except InvalidItem:
            limit = 0
        except OSError:  # EIO, ESTALE: the rename below may still work; count by default
            limit = self.max_attempts
        if parsed.counted < limit or not count:
            dst = self.dir("pending") / str(parsed.with_attempt(parsed.attempt + 1, free=not count))
            outcome = "retry"
        else:
            dst, outcome = self.dir("failed") / entry, "failed"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return "lost"
        self._sync(dst.parent.name, "claimed")
        _fp_revoke_after()
        if outcome == "failed":
            self.write_reason(dst, f"revoked after attempt {parsed.attempt}: {reason}")
        return outcome  # type: ignore[return-value]

    def reject(self, name: ItemName | str, reason: str) -> bool:
        """Move a done item to failed/ with ``reason`` (its result could not be integrated).

        One rename of done/N; False if it is no longer in done/.
        """
        src = self.dir("done") / str(name)
        dst = self.dir("failed") / str(name)
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return False
        self._sync("failed", "done")
        self.write_reason(dst, reason)
        return True

    def requeue_failed(self, item_id: str, name: ItemName | None = None) -> ItemName:
        """Operator retry: failed/N to pending/ at the next attempt, with a fresh attempt budget.

        The earlier attempts are marked free so ``max_attempts`` counts anew. ``name``
        is the failed/ name when the caller has it (from :meth:`locate`), saving a scan.
        Raises QueueError if the item is not in failed/ (or no longer under ``name``).
        """
        name = name or self.find(item_id, ("failed",))
        if name is None:
            raise QueueError(self.dir("failed"), f"item {item_id!r} is not in failed/")
        new = replace(name.with_attempt(name.attempt + 1), free=name.attempt)
        try:
            os.rename(self.dir("failed") / str(name), self.dir("pending") / str(new))
        except FileNotFoundError:
            raise QueueError(self.dir("failed") / str(name), "moved by someone else") from None
        self._sync("pending", "failed")
        fsops.unlink_quiet(self.dir("failed") / (str(name) + names.REASON_SUFFIX))
        return new

    def cancel_unclaimed(self, item_id: str, reason: str,
                         seen: tuple[str, ItemName] | None = None) -> bool:
        """Dead-letter a pending or waiting item with ``reason``; True if this call did.

        ``seen`` is the (state, name) the caller last saw the item under (from
        :meth:`locate`, for bulk cancels): tried first, then the item is looked for
        afresh. False if the item is in neither state, another claimant won it
        first, or it turned out malformed (dead-lettered with that reason instead).

        A pending item is first claimed by name (the same rename workers use),
        so a cancel and a worker's claim cannot both win.
        """
        if seen is not None and self._cancel_name(*seen, reason):
            return True
        for state in ("waiting", "pending"):
            name = self.find(item_id, (state,))
            if name is not None and self._cancel_name(state, name, reason):
                return True
        return False

    def _cancel_name(self, state: str, name: ItemName, reason: str) -> bool:
        if state == "waiting":
            return self._dead_letter(self.dir("waiting") / str(name), name, reason)
        if state != "pending":
            return False
        claim = self._try_claim(name, None)
        if claim is None or not _readable(claim):
            return False
        claim.fail(reason, retry=False)
        return True

    def mark_done(self, item_id: str) -> ItemName:
        """Operator: a failed, waiting or pending item to done/ (the work was done by hand).

        One rename (a pending item is first claimed by name, as ``cancel_unclaimed``
        does, so a worker cannot win it meanwhile). Raises QueueError if the item
        is in none of those states.
        """
        for state in ("failed", "waiting"):
            name = self.find(item_id, (state,))
            if name is not None:
                dst = self.dir("done") / str(name.ready())
                try:
                    os.rename(self.dir(state) / str(name), dst)
                except FileNotFoundError:
                    raise QueueError(self.dir(state) / str(name), "moved by someone else") from None
                self._sync("done", state)
                fsops.unlink_quiet(self.dir("failed") / (str(name) + names.REASON_SUFFIX))
                return name.ready()
        pending = self.find(item_id, ("pending",))
        claim = self._try_claim(pending, None) if pending is not None else None
        if claim is None or not _readable(claim):
            raise QueueError(self.root, f"item {item_id!r} is not failed, waiting or pending")
        claim.complete()
        return claim.name

    def terminal_ages(self, state: str) -> list[tuple[ItemName, float]]:
        """(name, when it entered ``state``) for done/ or failed/: a rename sets the ctime."""
        out = []
        for entry in names.entries(self.dir(state)):
            parsed = names.try_parse(entry)
            try:
                if parsed is not None:
                    out.append((parsed, os.stat(self.dir(state) / entry).st_ctime))
            except FileNotFoundError:
                continue
        return sorted(out, key=lambda t: t[1])

    def purge(self, state: str, name: ItemName) -> bool:
        """Remove a done/ or failed/ item for good, freeing its id; False if it was gone.

        The reservation goes first: a crash in between leaves a terminal name
        without ``ids/`` (fsck reports it; purge again removes it), never a lost
        reservation that recovery would bring back as a failed item.
        """
        path = self.dir(state) / str(name)
        reservation = self.dir("ids") / name.id
        if not path.exists():
            return False
        if fsops.same_file(path, reservation):
            fsops.unlink_quiet(reservation)
        removed = fsops.unlink_quiet(path)
        fsops.unlink_quiet(self.dir("failed") / (str(name) + names.REASON_SUFFIX))
        self._sync("ids", state)
        return removed

    def locate(self, states: tuple[str, ...] = STATES) -> dict[str, tuple[str, ItemName]]:
        """Every item's (state, name), from one listing of each of ``states``.

        For operations on many items (a bulk cancel or retry), where :meth:`find` per
        item would list the queue once per item. An id with names in two states (a
        crash mid-transition, until recover) gets the first of ``states``. A snapshot:
        items move while it is used, so whoever acts on a name handles its absence.
        """
        found: dict[str, tuple[str, ItemName]] = {}
        for state in states:
            for entry in names.entries(self.dir(state)):
                parsed = names.try_parse(entry)
                if parsed is not None:
                    found.setdefault(parsed.id, (state, parsed))
        return found

    def find(self, item_id: str, states: tuple[str, ...] = STATES) -> ItemName | None:
        """The name of ``item_id`` in the first of ``states`` that has it (a directory scan)."""
        for state in states:
            for entry in names.entries(self.dir(state)):
                if entry.split("~", 1)[0].endswith("." + item_id):
                    parsed = names.try_parse(entry)
                    if parsed is not None and parsed.id == item_id:
                        return parsed
        return None

    def promote(self, now: float | None = None,
                states: Callable[[bool], dict[str, str]] | None = None) -> list[ItemName]:
        """Move due retries, and items whose dependencies are all done, to pending/.

        An item whose dependency ended in failed/ is dead-lettered with that
        reason. Returns the names now pending. ``states(fresh)`` gives each
        terminal item's state (default: :meth:`terminal_states`, a listing of
        done/ and failed/); a caller may answer from an older listing when
        ``fresh`` is False. That only delays a promotion (done is final), and a
        dead-letter is decided on a fresh listing: a failed dependency may have
        been retried since.
        """
        now_ms = int((self.clock() if now is None else now) * 1000)
        waiting = [n for n in map(names.try_parse, names.entries(self.dir("waiting"))) if n]
        self.waiting_seen = waiting
        lookup = states or (lambda fresh: self.terminal_states())
        terminal: dict[str, str] | None = None
        fresh = False
        promoted = []
        for name in waiting:
            if name.due == names.DEP:
                terminal = lookup(False) if terminal is None else terminal
                blocker = self._blocking_dependency(name, terminal)
                if blocker is not None and blocker[1] and not fresh:
                    terminal, fresh = lookup(True), True
                    blocker = self._blocking_dependency(name, terminal)
                if blocker is None:
                    pass
                elif blocker[1]:
                    self._dead_letter(self.dir("waiting") / str(name), name, blocker[1])
                    continue
                else:
                    continue
            elif name.due is not None and name.due > now_ms:
                continue
            _fp_promote_before()
            try:
                os.rename(self.dir("waiting") / str(name), self.dir("pending") / str(name.ready()))
            except FileNotFoundError:
                continue
            promoted.append(name.ready())
        if promoted:
            self._sync("pending", "waiting")
        return promoted

    def shift_due(self, seen: list[ItemName], seconds: float) -> int:
        """Move the due time of each of ``seen`` still in waiting/ by ``seconds`` (the wall
        clock stepped); one rename each, within waiting/. Returns how many moved."""
        moved = 0
        for name in seen:
            if not isinstance(name.due, int):
                continue
            new = replace(name, due=max(0, name.due + int(seconds * 1000)))
            try:
                os.rename(self.dir("waiting") / str(name), self.dir("waiting") / str(new))
            except FileNotFoundError:
                continue  # promoted or revoked meanwhile
            moved += 1
        if moved:
            self._sync("waiting")
        return moved

    def terminal_states(self) -> dict[str, str]:
        """Item id -> "done" or "failed", for every item in those states (a listing of both)."""
        states = {}
        for state in ("done", "failed"):
            for entry in names.entries(self.dir(state)):
                parsed = names.try_parse(entry)
                if parsed:
                    states[parsed.id] = state
        return states

    def _blocking_dependency(self, name: ItemName, terminal: dict[str, str]
                             ) -> tuple[str, str] | None:
        """None if every dependency is done; else (dep, reason-to-fail or '')."""
        try:
            item = load(fsops.read_regular(self.dir("waiting") / str(name)), str(name))
        except FileNotFoundError:
            return ("", "")
        except fsops.NotAFile as exc:
            self.junk(self.dir("waiting") / str(name), exc.kind)
            return ("", "")
        except InvalidItem as exc:
            return ("", f"unreadable item: {exc}")
        for dep in item.depends_on:
            state = terminal.get(dep)
            if state == "failed":
                return (dep, f"dependency {dep!r} failed: {self.failure_reason(dep)}")
            if state != "done":
                return (dep, "")
        return None

    # -- sidecars and lookups ------------------------------------------------

    def write_reason(self, failed_path: Path, reason: str, *, replace: bool = True) -> None:
        """Write the reason file beside a failed/ item, atomically.

        ``replace=False`` keeps a reason that is already there (recovery uses
        it so it never overwrites the reason a live worker just wrote).
        """
        fsops.write_atomic(failed_path.with_name(failed_path.name + names.REASON_SUFFIX),
                           reason.encode() + b"\n", tmp_dir=self.root / "tmp",
                           durable=self.durable, replace=replace, mode=self.file_mode)

    def failure_reason(self, item_id: str) -> str:
        for entry in names.entries(self.dir("failed")):
            parsed = names.try_parse(entry)
            if parsed and parsed.id == item_id:
                path = self.dir("failed") / (entry + names.REASON_SUFFIX)
                try:
                    return path.read_text().strip()
                except FileNotFoundError:
                    return "(no reason recorded)"
        return "(not failed)"

    def _dead_letter(self, path: Path, name: ItemName, reason: str) -> bool:
        """Move a live name straight to failed/ with ``reason``; False if it was gone."""
        dst = self.dir("failed") / str(name.ready())
        try:
            os.rename(path, dst)
        except FileNotFoundError:
            return False
        self._sync("failed", path.parent.name)
        self.write_reason(dst, reason)
        return True

    def counts(self) -> dict[str, int]:
        """Items per state, from directory listings only (no file is opened), streamed:
        the coordinator's paced count must not hold a million names for a moment."""
        return {state: names.count(self.dir(state)) for state in STATES}

    def scan(self) -> dict[str, list[ItemName]]:
        """Parsed names per state, plus unparseable entries under ``foreign/<state>``.

        A snapshot per directory, not of the whole queue: an item moving during
        the scan may be missed or seen twice. recover() relies on more than a
        scan for that reason (the link count of ids/<id>).
        """
        result: dict[str, list[Any]] = {}
        for state in STATES:
            parsed, foreign = [], []
            for entry in names.entries(self.dir(state)):
                n = names.try_parse(entry)
                (parsed if n else foreign).append(n or entry)
            result[state] = sorted(parsed, key=str)
            if foreign:
                result[f"foreign/{state}"] = sorted(foreign)
        return result

    def read(self, state: str, name: ItemName | str) -> Item:
        path = self.dir(state) / str(name)
        return load(fsops.read_regular(path), str(path))

    def junk(self, path: Path, why: str) -> bool:
        """Move an entry that is not an item file to junk/ with a reason file; True if moved.

        One rename (it moves FIFOs, symlinks and directories alike, and needs no right
        to link the file), to a free name. An entry that cannot be moved (EPERM: an
        immutable file) is left where it is, reported once and listed in ``stuck``.
        """
        where = f"{path.parent.name}/{path.name}"
        for n in range(1000):
            dst = self.dir(JUNK) / (path.name if n == 0 else f"{path.name}.{n}")
            if not os.path.lexists(dst):
                break
        try:
            os.rename(path, dst)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if where not in self.stuck:
                self.stuck.add(where)
                self._report_junk(f"cannot move {where} ({why}) to {JUNK}/: {exc.strerror};"
                                  " left in place, ignored")
            return False
        self._sync(JUNK, path.parent.name)
        fsops.write_atomic(dst.with_name(dst.name + names.REASON_SUFFIX),
                           f"{where}: {why}\n".encode(), tmp_dir=self.root / "tmp",
                           durable=self.durable, mode=self.file_mode)
        self._report_junk(f"moved {where} to {JUNK}/{dst.name}: {why}")
        return True

    def _report_junk(self, text: str) -> None:
        if self.on_junk is not None:
            self.on_junk(text)

    def stuck_in(self, state: str) -> int:
        """How many of ``state``'s entries are junk that could not be moved aside."""
        return sum(1 for s in self.stuck if s.startswith(state + "/"))

    def _sync(self, *dirs: str) -> None:
        """With ``durable``, fsync ``dirs`` in order. Callers name the directory that
        gained the name first: on a disk that does not journal directories, a power loss
        between the two syncs then keeps the new name (the old one, if it comes back too,
        is a duplicate recover() resolves), never only the old one."""
        if self.durable:
            for d in dict.fromkeys(dirs):
                fsops.fsync_dir(self.root / d)


def _readable(claim: Claim) -> bool:
    """Read the claim's item now; False if it was disposed of (Unusable) or revoked."""
    try:
        return claim.item is not None
    except (Unusable, Fenced):
        return False


def _smallest(listed: list[str], size: int) -> list[str]:
    """The ``size`` smallest of ``listed``, sorted (``size < len(listed)``).

    A cut-off from a sorted sample, a filter and a sort of what passes: 0.4 s for a
    million names here, where sorting them all took 0.9 s and heapq.nsmallest 1.4 s.
    Should the sample mislead (fewer than ``size`` pass), nsmallest gives the answer.
    """
    k = min(len(listed), 4096)
    sample = sorted(random.sample(listed, k))
    cut = sample[min(k - 1, int(k * size / len(listed) * 1.25) + 8)]
    out = [x for x in listed if x <= cut]
    if len(out) < size:
        return heapq.nsmallest(size, listed)
    out.sort()
    del out[size:]
    return out
