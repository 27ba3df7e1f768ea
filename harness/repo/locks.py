"""git's ``.lock`` files: telling a stale one from a live one, and removing only the stale.

git takes a lock by creating ``<file>.lock`` with O_EXCL and renames it over
``<file>`` when done; a process killed in between (inside ``git update-ref``,
say) leaves the lock behind and every later writer of that ref fails with
"Unable to create '…/x.lock': File exists". git never breaks such a lock
itself and records no owner in it. The rule here: a lock is stale when it is
older than every git process running on this host, since only a git process
that was alive when the lock appeared could own it. A lock that may have a
live owner is left alone, and the caller retries later.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil

from harness.repo import refstream

_LOCK_IN_STDERR = re.compile(r"Unable to create '([^']+\.lock)': File exists")
_MARGIN = 1.0  # seconds: a lock made within this of a git process's start may be its own


def lock_in(stderr: str) -> Path | None:
    """The lock file git's error message says exists, if it says so."""
    m = _LOCK_IN_STDERR.search(stderr or "")
    return Path(m[1]) if m else None


def _git_processes_start() -> float | None:
    """The earliest time a git process on this host may have taken a lock still held (None
    if none runs): its start, or for a harness ref stream (repo.refstream), which holds
    locks only inside one transaction, the start of the longest transaction it may run."""
    earliest, now = None, time.time()
    for proc in psutil.process_iter(["name", "create_time", "cmdline"]):
        name = proc.info.get("name") or ""
        if name == "git" or name.startswith("git-"):
            t = proc.info.get("create_time")
            if t is not None and _is_ref_stream(proc.info.get("cmdline") or []):
                t = max(t, now - refstream.HOLD_MAX)
            if t is not None and (earliest is None or t < earliest):
                earliest = t
    return earliest


def _is_ref_stream(argv: list[str]) -> bool:
    return (len(argv) == 5 and argv[1:3] == ["update-ref", "-m"] and argv[4] == "--stdin"
            and argv[3].startswith(refstream.MARK))


def is_stale(lock: Path) -> bool:
    """True if no git process now running can own ``lock`` (false if it is gone)."""
    try:
        made = os.lstat(lock).st_mtime
    except FileNotFoundError:
        return False
    earliest = _git_processes_start()
    return earliest is None or made < earliest - _MARGIN


def remove_if_stale(lock: Path, git_dir: Path) -> bool:
    """Remove ``lock`` if it is stale and lies inside ``git_dir`` (a repository's common
    git dir, resolved); True if this call removed it."""
    lock = Path(os.path.realpath(Path(lock).parent)) / Path(lock).name
    if lock.suffix != ".lock" or not lock.is_relative_to(Path(os.path.realpath(git_dir))):
        return False
    if os.path.islink(lock) or not is_stale(lock):
        return False
    try:
        os.unlink(lock)
    except FileNotFoundError:
        return False
    return True
