"""Raw filesystem steps the queue is built from, and the start-up probe.

Everything here is a thin, explicit wrapper so the protocol code reads as
its syscalls and the durability rule lives in one place: with ``durable``
on, a file is fsynced before it is published and every directory whose
entries changed is fsynced after the link/rename (fsync(2): syncing a file
does not persist its directory entry).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK,
          "a symbolic link"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))

class UnsupportedFilesystem(RuntimeError):
    """The queue directory cannot give the atomic operations the protocol needs."""

    def __init__(self, path: Path | str, operation: str, reason: str) -> None:
        self.path, self.operation, self.reason = Path(path), operation, reason
        super().__init__(
            f"{path}: {operation} failed: {reason}. The queue needs hard links, atomic rename,"
            " O_EXCL and directory fsync on one filesystem; put the whole queue/ directory on"
            " one local or NFSv3+ mount (not split across bind mounts or volumes)."
        )


class NotAFile(Exception):
    """A queue entry that is not a regular file (FIFO, symlink, directory, device, socket).

    Such an entry is junk: it is never opened in a way that could block or follow a
    link, and is moved aside (Queue.junk).
    """

    def __init__(self, path: Path | str, kind: str) -> None:
        self.path, self.kind = Path(path), kind
        super().__init__(f"{path}: not a regular file ({kind})")


def kind_of(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def read_regular(path: Path | str) -> bytes:
    """The bytes of a regular file, opened so that nothing can block or redirect the read.

    ``O_NOFOLLOW`` refuses a symlink, ``O_NONBLOCK`` keeps a FIFO from blocking the
    open, and fstat refuses everything but a regular file before a byte is read.
    Raises NotAFile for those, FileNotFoundError and other OSErrors as usual.

    The fstat also gives the size, so an item file (immutable) is read with one
    ``read`` of size + 1 bytes: getting exactly the size back means the read met the
    end of the file. Anything else (the file changed meanwhile) reads on to EOF.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile(path, "a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a socket; a directory (O_WRONLY only)
            raise NotAFile(path, kind_of(os.lstat(path).st_mode)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(path, kind_of(st.st_mode))
        data = os.read(fd, st.st_size + 1)
        if len(data) == st.st_size:
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_regular(path: Path | str) -> bool | None:
    """True for a regular file, False for anything else, None if absent (lstat: no link
    is followed)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path | str, data: bytes, *, durable: bool, lock: bool = False,
              mode: int = 0o600) -> int:
    """Create ``path`` exclusively with ``mode``, write ``data``; return the still-open fd.

    With ``lock`` the file is flocked (exclusively) before the first byte is
    written, so an observer that can take the lock knows the writer is gone.
    A mode with group bits (a shared queue) is set whatever the umask. The caller
    owns the fd and must close it. Raises FileExistsError if the name is taken.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if mode & 0o070:
            os.fchmod(fd, mode)
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def write_atomic(path: Path, data: bytes, *, tmp_dir: Path, durable: bool,
                 replace: bool = True, mode: int = 0o600) -> bool:
    """Publish ``data`` at ``path`` so readers see the old or the new file, never half.

    The staging file lives in ``tmp_dir`` (same filesystem, dot-named so
    scanners skip it). With ``replace`` it is renamed over ``path``; without,
    it is linked, so an existing file wins and False is returned.
    """
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}"
    os.close(write_new(tmp, data, durable=durable, mode=mode))
    try:
        if replace:
            os.rename(tmp, path)  # the staging name is gone with it
        else:
            os.link(tmp, path)
            unlink_quiet(tmp)
    except BaseException as exc:
        unlink_quiet(tmp)
        if isinstance(exc, FileExistsError):
            return False
        raise
    if durable:
        fsync_dir(path.parent)
    return True


def unlink_quiet(path: Path | str) -> bool:
    """Unlink; True if this call removed it, False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def same_file(a: Path | str, b: Path | str) -> bool:
    """True if both names exist and are links to one inode (checked now, not remembered)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def probe(root: Path, subdirs: list[str]) -> None:
    """Check that ``root``'s queue directories support the protocol; raise UnsupportedFilesystem.

    In ``root/tmp``: an O_EXCL create (a second one must fail with EEXIST);
    then a hard link into every directory (same inode; linking onto an
    existing name must fail with EEXIST) and a rename from each directory into
    the next, so a bind mount on any one of them (same st_dev, but EXDEV on
    link and rename) is caught; directory fsync of each; equal st_dev.
    """
    dev = os.stat(root).st_dev
    for sub in subdirs:
        if os.stat(root / sub).st_dev != dev:
            raise UnsupportedFilesystem(root / sub, "same-device check",
                                        f"{sub}/ is on another device than {root}")
    name = f".probe-{os.getpid()}-{os.urandom(4).hex()}"
    src = root / "tmp" / name
    made = [src]
    try:
        _step(src, "O_EXCL create", lambda: os.close(write_new(src, b"probe", durable=True)))
        try:
            os.close(os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            raise UnsupportedFilesystem(src, "O_EXCL create", "a second exclusive create succeeded")
        for sub in subdirs:
            made.append(root / sub / name)
            _probe_link(src, root / sub / name)
        for here, there in zip(subdirs, subdirs[1:]):
            moved = root / there / (name + ".r")
            made.append(moved)
            _probe_rename(root / here / name, moved)
            os.unlink(moved)
        for d in ("tmp", *subdirs):
            _step(root / d, "directory fsync", fsync_dir, root / d)
    finally:
        for p in made:
            unlink_quiet(p)


def _step(path: Path, operation: str, fn, *args) -> None:
    try:
        fn(*args)
    except OSError as exc:
        raise UnsupportedFilesystem(path, operation, os.strerror(exc.errno or 0)) from exc


def _probe_link(src: Path, dst: Path) -> None:
    _step(dst, "link", os.link, src, dst)
    if not same_file(src, dst):
        raise UnsupportedFilesystem(dst, "link", "the new name is not a second link to the file")
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    raise UnsupportedFilesystem(dst, "link", "linking onto an existing name succeeded")


def _probe_rename(src: Path, dst: Path) -> None:
    _step(dst, "rename", os.rename, src, dst)
    if os.path.exists(src) or not os.path.exists(dst):
        raise UnsupportedFilesystem(dst, "rename", "rename did not move the name")
