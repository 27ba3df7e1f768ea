"""Reading git's administrative files directly, where that is exact and saves a process.

Everything here reads and never writes; each reader says what it does when the
files cannot tell (a format it does not know, a read error): then the caller
asks git. Nothing here knows of worktree slots, attempts or the queue.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
UNKNOWN: Any = object()  # the files say nothing certain: ask git


def read(path: Path | str) -> str | None:
    """The file's text, stripped; None if it cannot be read. (Raw reads: these files are a
    line each, read several times per item.)"""
    try:
        return _read_bytes(path).decode("utf-8", "surrogateescape").strip()
    except (OSError, ValueError):
        return None


def _read_bytes(path: Path | str) -> bytes:
    """The whole file with raw reads; OSError as open/read raise it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def path_in(base: Path, text: str) -> Path:
    p = Path(text)
    return p if p.is_absolute() else base / p


def gitdir_of(wt: Path) -> Path | None:
    """The git dir of a worktree: ``.git`` itself, or where its ``.git`` file points."""
    dotgit = wt / ".git"
    if dotgit.is_dir():
        return dotgit
    text = read(dotgit)
    if not text or not text.startswith("gitdir:"):
        return None
    return path_in(wt, text[len("gitdir:"):].strip())


def common_of_gitdir(gitdir: Path) -> Path:
    text = read(gitdir / "commondir")
    return path_in(gitdir, text) if text else gitdir


def ref_in_files(common: Path, ref: str) -> str | None | Any:
    """A branch's sha read from the files git keeps (no process): the loose ref, else
    packed-refs; None if it is in neither; ``UNKNOWN`` if the files cannot tell (a
    symbolic or odd ref, the reftable format, a read error). git writes a loose ref
    by renaming a whole file over it, so a read sees the old value or the new."""
    base = os.fspath(common)
    if os.path.exists(f"{base}/reftable"):
        return UNKNOWN
    try:
        text = _read_bytes(f"{base}/{ref}").decode("ascii").strip()
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return UNKNOWN
    else:
        return text if SHA.fullmatch(text) else UNKNOWN
    try:
        packed = _read_bytes(f"{base}/packed-refs").decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN
    at = packed.find(f" {ref}\n")
    if at < 0:
        return None if packed.endswith("\n") or not packed else UNKNOWN
    line = packed[packed.rfind("\n", 0, at) + 1:at]
    return line if SHA.fullmatch(line) else UNKNOWN


def head_in_files(gitdir: Path) -> str | None:
    """The commit HEAD resolves to, from the files alone: a detached sha, or the branch
    it names; None if the files cannot tell (unborn, symbolic chains, reftable)."""
    head = read(gitdir / "HEAD")
    if head and SHA.fullmatch(head):
        return head
    if head and head.startswith("ref: refs/heads/"):
        sha = ref_in_files(common_of_gitdir(gitdir), head[len("ref: "):])
        return sha if isinstance(sha, str) else None
    return None
