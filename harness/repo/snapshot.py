"""A worktree's state as ``lstat`` sees it, to tell "nothing changed since git said clean"
without running git.

A :class:`Snapshot` records, for every entry under the worktree (the top-level
``.git`` file left out) and for the files ``git status`` reads besides (the
repository's and the user's config, exclude and attributes files),
``(inode, mode, size, mtime, ctime)``; a digest of the index's bytes; and the
commit HEAD resolves to. If a later :meth:`Snapshot.holds` finds every one of
those identical, the tree is the one git looked at, and git's verdict then
still holds. (The index is compared by content: ``git status`` itself may
rewrite it a moment before, in the same clock tick, see below.)

Why an identical ``lstat`` means an identical file: every change to a file's
data or metadata sets its ctime to the filesystem's clock, which no system call
can set back. The one gap is granularity: a change made in the same clock tick
as the ``lstat`` that recorded the file can leave all five fields as they were.
:func:`take` closes it the way git closes its "racy clean" case: it first writes
a stamp file next to the index, and trusts no entry whose ctime is not strictly
older than the stamp's (the same filesystem's clock, whatever its resolution).
Such a tree gets no snapshot, and the caller asks git.

What is not covered: more entries than ``max_entries`` (walking would cost
more than git), a nested repository or a submodule (its HEAD and index live
elsewhere) make :func:`take` raise :class:`Unfit`; a HEAD that the files alone
cannot resolve makes it return None. An ignore file outside this list (a ``core.excludesFile`` set to
some other path) is not watched: a change to it that makes an ignored file
count is missed until the next ``git status``; nothing is lost by it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 5000
STAMP_NAME = "harness-clock"


class Unfit(Exception):
    """The tree is of a kind a snapshot cannot stand for (too many entries, a nested
    repository or submodule): unlike a change in the clock tick, it will not pass soon."""

_Stat = tuple[int, int, int, int, int]  # ino, mode, size, mtime_ns, ctime_ns


def _stat_of(st: os.stat_result) -> _Stat:
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _user_files() -> list[str]:
    """The per-user and system git files that can change what ``git status`` reports."""
    home = os.environ.get("HOME", "")
    xdg = os.environ.get("XDG_CONFIG_HOME") or (os.path.join(home, ".config") if home else "")
    files = ["/etc/gitconfig", *(os.environ.get(v, "") for v in ("GIT_CONFIG_GLOBAL",
                                                                   "GIT_CONFIG_SYSTEM"))]
    if home:
        files.append(os.path.join(home, ".gitconfig"))
    if xdg:
        files += [os.path.join(xdg, "git", n) for n in ("config", "ignore", "attributes")]
    return [f for f in files if f]


def _git_files(gitdir: Path, common: Path) -> list[str]:
    return [str(gitdir / "config.worktree"), str(common / "config"),
            str(common / "info" / "exclude"), str(common / "info" / "attributes"),
            *_user_files()]


def _stat_or_none(path: str) -> _Stat | None:
    try:
        return _stat_of(os.lstat(path))
    except FileNotFoundError:
        return None


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=20).digest()
    except FileNotFoundError:
        return None


def _walk(root: str, limit: int) -> dict[str, _Stat] | None:
    """Every entry under ``root`` but the top ``.git``, symlinks not followed; None past
    ``limit`` entries or at a nested repository (a ``.git`` below the top)."""
    out: dict[str, _Stat] = {}
    stack = [root]
    while stack:
        top = stack.pop()
        with os.scandir(top) as it:
            for entry in it:
                if entry.name == ".git":
                    if top == root:
                        continue
                    return None  # a nested repository or submodule: its state is elsewhere
                st = entry.stat(follow_symlinks=False)
                out[entry.path] = _stat_of(st)
                if len(out) > limit:
                    return None
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return out


@dataclass(frozen=True)
class Snapshot:
    """What :func:`take` saw; ``head`` is the commit HEAD resolved to."""

    head: str
    index: bytes | None
    files: tuple[_Stat | None, ...]
    tree: dict[str, _Stat]
    _paths: tuple[str, ...]
    _root: str
    _gitdir: Path

    def holds(self, head: str | None) -> bool:
        """True if HEAD is still ``self.head`` (the caller resolves it) and no recorded
        entry changed, appeared or went since. Any error reading the tree: False."""
        if head != self.head:
            return False
        try:
            if tuple(_stat_or_none(p) for p in self._paths) != self.files or \
                    _digest(self._gitdir / "index") != self.index:
                return False
            return _walk(self._root, len(self.tree)) == self.tree
        except OSError:
            return False


def take(wt: Path, gitdir: Path, common: Path, head: Callable[[], str | None], *,
         max_entries: int = MAX_ENTRIES) -> Snapshot | None:
    """Record the worktree now; None if it cannot be trusted yet (an entry changed in the
    stamp's clock tick, HEAD unresolved, a read error). Raises :class:`Unfit` for a tree
    no snapshot will stand for (see the module docstring), so the caller stops trying.

    ``head`` resolves HEAD from git's files (None if they cannot tell). The stamp
    file is written before anything is read, so every entry must be older than it.
    """
    stamp = gitdir / STAMP_NAME
    try:
        fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"x")  # a write, so its ctime is the clock's now
            now = os.fstat(fd).st_ctime_ns
        finally:
            os.close(fd)
        sha = head()
        if (gitdir / "modules").exists() or (Path(wt) / ".gitmodules").exists():
            raise Unfit("submodules")
        tree = _walk(str(wt), max_entries)  # before the index: a big tree stops here
        if tree is None:
            raise Unfit(f"more than {max_entries} entries, or a nested repository")
        paths = tuple(_git_files(gitdir, common))
        files = tuple(_stat_or_none(p) for p in paths)
        index = _digest(gitdir / "index")
    except OSError:
        return None
    if sha is None or any(f is not None and f[4] >= now for f in files) or any(
            s[4] >= now for s in tree.values()):
        return None  # changed in the stamp's clock tick: a later change could look the same
    return Snapshot(sha, index, files, tree, paths, str(wt), gitdir)
