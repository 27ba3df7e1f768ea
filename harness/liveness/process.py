"""Who is alive: process identity and the per-worker lock.

A local worker holds an exclusive ``flock`` on ``state/workers/<id>.lock``
for its whole life. The kernel drops it the moment the process dies, even
before it is reaped, so "the lock can be taken" is proof of death with no
clock and no pid-reuse problem. ``(pid, start time)`` is the second check
(psutil's process identity); a bare pid is never trusted. Processes on
another host or boot cannot be probed: they are judged by heartbeat
counters only (see heartbeat.py).
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psutil


@cache
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    boot_id: str
    pid: int
    start_time: float

    @classmethod
    def of(cls, pid: int | None = None) -> ProcessIdentity:
        pid = os.getpid() if pid is None else pid
        return cls(socket.gethostname(), boot_id(), pid, psutil.Process(pid).create_time())

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ProcessIdentity | None:
        try:
            return cls(str(record["host"]), str(record["boot_id"]), int(record["pid"]),
                       float(record["start_time"]))
        except (KeyError, TypeError, ValueError):
            return None

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    def is_local(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == boot_id()

    def is_running(self) -> bool | None:
        """True/False for a local process (zombies count as dead); None if not local."""
        if not self.is_local():
            return None
        try:
            proc = psutil.Process(self.pid)
            return (abs(proc.create_time() - self.start_time) < 0.01
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


def hold_lock(path: Path) -> int | None:
    """Take the exclusive lock at ``path`` for this process's life; None if someone holds it.

    The returned fd must stay open (closing it releases the lock). The file
    is never unlinked: unlinking a locked file splits waiters across inodes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_is_held(path: Path) -> bool:
    """True if some live process holds the lock at ``path`` (probe without keeping it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock we may have taken
    return False
