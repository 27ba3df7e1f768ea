"""Names added to a directory since the last look: inotify (Linux), for the claimant's cache.

A claimant keeps a window of the smallest names of pending/ instead of listing the
directory again and again (with a million items pending a listing takes a third of a
second). What it must not miss is a name *added* below the window's end (a new urgent
item, a retry that keeps its place in line); names removed are found by the claim's
own ``rename`` failing. ``DirWatch.added()`` returns exactly those additions, or None
when it cannot vouch for them, and the caller lists the directory instead:

- no inotify (not Linux, no ``libc``, the per-user instance limit reached);
- the kernel's event queue overflowed (``IN_Q_OVERFLOW``), or the watch was removed
  (the directory was deleted or the file system unmounted: ``IN_IGNORED``);
- the calling process is not the one that opened the watch (after a fork both would
  drain one queue, each seeing only part of it).

inotify reports what happens through this kernel: on NFS, names another host adds are
not seen, which is why the claimant still lists the directory on a slow period
(``Queue.rescan_every``). Only the standard library is used (ctypes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import weakref
from typing import Final

IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and hasattr(os, "O_CLOEXEC"):
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.inotify_init1, lib.inotify_add_watch  # noqa: B018 -- absent off Linux
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


class DirWatch:
    """Additions (created, linked or renamed in) to one directory since the last call."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.pid = os.getpid()
        self.fd = -1
        lib = _lib()
        if lib is None:
            return
        fd = lib.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return  # EMFILE: max_user_instances reached; the caller lists instead
        if lib.inotify_add_watch(fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO) < 0:
            os.close(fd)
            return
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)  # runs at most once

    def added(self) -> list[str] | None:
        """The names added since the last call (in event order, possibly repeated), or
        None if some may have been missed: then the caller must list the directory."""
        if not self.alive:
            return None
        out: list[str] = []
        lost = False
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            pos = 0
            while pos < len(buf):
                _wd, mask, _cookie, size = _HEADER.unpack_from(buf, pos)
                pos += _HEADER.size
                if mask & (IN_Q_OVERFLOW | IN_IGNORED):
                    lost = True
                elif size:
                    out.append(os.fsdecode(buf[pos:pos + size].rstrip(b"\0")))
                pos += size
        if lost:
            self.close()
            return None
        return out

    @property
    def alive(self) -> bool:
        return self.fd >= 0 and os.getpid() == self.pid

    def close(self) -> None:
        if self.fd >= 0:
            self._closer()
        self.fd = -1
