"""Ref updates through one long-lived ``git update-ref --stdin``: a transaction per update
on a pipe, instead of a git process per update.

git does the work (its ref locking, packed-refs, reflogs, the reference-transaction
hook, D/F conflicts, reftable), so the result is what ``git update-ref`` gives.
Each update is sent whole as ``start`` / ``create|update`` / ``prepare`` /
``commit``, so git finishes it without waiting on this process: a caller that
dies mid-update leaves git to commit or abort it and then read end-of-file.
A failed transaction makes git exit (``fatal: ...``): :meth:`RefStream.apply`
raises :class:`RefRejected` with git's message, and the next call starts a new
process. Stale-lock detection (repo.locks) knows these processes hold a lock only
while a transaction runs (:data:`HOLD_MAX`), not for their whole life.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
from pathlib import Path

from harness.paths import user_umask
from harness.repo.gitenv import git_env

MARK = "parallel-harness:"  # every stream's reflog message starts so (repo.locks reads argv)
HOLD_MAX = 10.0  # seconds a stream may take over one transaction before it is killed
_REPLIES = (b"start: ok", b"prepare: ok", b"commit: ok")


class RefRejected(Exception):
    """git refused or could not finish the update; ``stderr`` is git's message."""

    def __init__(self, message: str, *, stderr: str = "", cwd: Path | None = None) -> None:
        super().__init__(message)
        self.stderr, self.cwd = stderr, cwd

    def __str__(self) -> str:
        tail = f": {self.stderr.strip()}" if self.stderr.strip() else ""
        return f"{self.args[0]} (in {self.cwd}){tail}"


class RefStream:
    """A ``git update-ref --stdin -m <message>`` in ``cwd``, started on first use.

    Not thread-safe; one per worker. :meth:`close` ends the process (also at
    garbage collection); a stream is reusable after a rejected update.
    """

    def __init__(self, cwd: Path, message: str) -> None:
        if not message.startswith(MARK):
            raise ValueError(f"a stream's message starts with {MARK!r}: {message!r}")
        self.cwd, self.message = Path(cwd), message
        self._proc: subprocess.Popen[bytes] | None = None
        self._err = None

    def create(self, ref: str, sha: str) -> None:
        """``ref`` = ``sha``, only if ``ref`` does not exist."""
        self.apply(f"create {ref} {sha}")

    def update(self, ref: str, sha: str, old: str | None) -> None:
        """``ref`` = ``sha`` if it is ``old`` now (None: if it does not exist)."""
        self.apply(f"update {ref} {sha} {old}" if old else f"create {ref} {sha}")

    def apply(self, command: str) -> None:
        if "\n" in command:
            raise ValueError(f"one command, one line: {command!r}")
        try:
            proc = self._proc or self._start()
        except OSError as exc:  # git not installed, the directory gone
            raise self._failed(f"cannot start git update-ref --stdin: {exc}") from exc
        try:
            proc.stdin.write(f"start\n{command}\nprepare\ncommit\n".encode())
            proc.stdin.flush()
            replies = self._read_replies(proc)
        except (BrokenPipeError, OSError, TimeoutError) as exc:
            raise self._failed(f"git update-ref --stdin: {exc}") from exc
        if replies != list(_REPLIES):
            raise self._failed(f"{command.split()[0]} {command.split()[1]} failed")

    def _start(self) -> subprocess.Popen[bytes]:
        self._err = tempfile.TemporaryFile()  # not a pipe: git's warnings must never block it
        self._proc = subprocess.Popen(
            ["git", "update-ref", "-m", self.message, "--stdin"], cwd=self.cwd, env=git_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            umask=user_umask(), bufsize=0)
        return self._proc

    def _read_replies(self, proc: subprocess.Popen[bytes]) -> list[bytes]:
        deadline, buf, fd = time.monotonic() + HOLD_MAX, b"", proc.stdout.fileno()
        while buf.count(b"\n") < len(_REPLIES):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no reply in {HOLD_MAX:.0f} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # git exited: the transaction failed
            buf += chunk
        return buf.splitlines()

    def _failed(self, message: str) -> RefRejected:
        stderr = self._stop()
        return RefRejected(message, stderr=stderr, cwd=self.cwd)

    def _stop(self) -> str:
        """End the process; git's stderr so far."""
        proc, err, self._proc, self._err = self._proc, self._err, None, None
        if proc is not None:
            proc.stdin.close()
            try:
                proc.wait(timeout=HOLD_MAX)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by its pid
                proc.wait()
            proc.stdout.close()
        if err is None:
            return ""
        err.seek(0)
        text = err.read().decode("utf-8", "surrogateescape")
        err.close()
        return text

    def close(self) -> None:
        self._stop()

    def __del__(self) -> None:
        try:
            self._stop()
        except Exception:  # at interpreter exit: nothing left to report to
            pass
