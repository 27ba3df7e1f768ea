"""Where the harness may act: inside the workspace, reached through no symbolic link.

Every path the harness deletes, resets, cleans or runs an agent in is checked
with :func:`check_inside` at the moment of use. A symlink anywhere below the
workspace root is reported and left alone, never followed: a ``worktrees/w1``
that links to the user's own checkout must not have its branch switched, and
a ``worktrees/w9`` that links to another checkout must not be deleted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePath(Exception):
    """``path`` is outside the workspace or reached through a symlink; ``reason`` says which."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}; not acting on it")


def check_inside(root: Path | str, path: Path | str) -> Path:
    """Return ``path`` if it lies strictly inside ``root`` with no symlink from ``root`` down.

    Each existing component is examined with ``lstat``; components that do not
    exist yet are fine (nothing to follow). ``root`` itself may be a symlink
    (the operator's choice); it is resolved once. Raises :class:`UnsafePath`.
    """
    base = Path(os.path.realpath(root))
    target = Path(os.path.abspath(path))
    rel = _relative(target, base) or _relative(target, Path(os.path.abspath(root)))
    if rel is None:
        raise UnsafePath(path, f"not inside the workspace {base}")
    if not rel.parts or ".." in rel.parts:
        raise UnsafePath(path, f"not strictly inside the workspace {base}")
    current = base
    for part in rel.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break
        if stat.S_ISLNK(mode):
            raise UnsafePath(path, f"{current} is a symbolic link (to {os.readlink(current)!r})")
    return base / rel


def _relative(target: Path, base: Path) -> Path | None:
    return target.relative_to(base) if target.is_relative_to(base) else None


def is_unsafe(root: Path | str, path: Path | str) -> str | None:
    """The reason ``path`` may not be acted on, or None when :func:`check_inside` passes."""
    try:
        check_inside(root, path)
    except UnsafePath as exc:
        return exc.reason
    return None


_user_umask: int | None = None


def private_files() -> None:
    """From now on this process creates its files 0600 and its directories 0700: logs hold
    prompts, transcripts and whatever the agent printed. Git and the agent, which write the
    user's own files, run with :func:`user_umask` instead. Idempotent."""
    global _user_umask
    if _user_umask is None:
        _user_umask = os.umask(0o077)


def user_umask() -> int:
    """The umask this process had before :func:`private_files` (its current one if never)."""
    if _user_umask is not None:
        return _user_umask
    current = os.umask(0o077)
    os.umask(current)
    return current
