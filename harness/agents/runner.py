"""Run one agent process: its own process group, stdin from a file, output read live.

The agent (any argv) starts in a new session, so one ``killpg`` reaches
everything it spawned, and behind a gate (GATE): it cannot run before the caller
has recorded who it is. Its stdout is read as it arrives (never waiting for
a pipe buffer to fill or for EOF), split into lines, written raw to a
capped log and handed to ``on_line``; stderr goes to a capped log. Between
reads ``on_poll`` refreshes the heartbeat and may return a reason to abort
(fenced, cancelled). The process group is killed (TERM, grace, KILL) on
timeout, on a stall (no output line for ``stall_after`` plus the silence the agent
announced, ``quiet_allowance``: a retry delay, a running tool), on abort, and
when the agent has reported its result but does not exit within
``result_grace``.
"""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import psutil

from harness.paths import user_umask
from harness.queue import failpoints

TERM_GRACE: Final = 2.0  # seconds between TERM and KILL of an agent's process group
DRAIN_AFTER_EXIT: Final = 1.0  # a grandchild may hold stdout open after the agent exits
# The gate: the agent's process waits in /bin/sh until the caller has recorded its pid and
# start time (the heartbeat), then execs the agent in place (same pid, same start time) with
# its stdin from a file. If the caller dies first, the read sees EOF and nothing runs.
GATE: Final = ('read -r go && [ "$go" = go ] || exit 111; f=$1; shift;'
               ' exec "$@" <"$f"')
_fp_spawned = failpoints.define(
    "agent.spawned", "agent process gated, its identity not yet recorded by the worker")


@dataclass(frozen=True)
class Limits:
    timeout: float
    stall_after: float | None = None  # silence allowed; the agent's quiet_allowance adds to it
    result_grace: float = 10.0
    log_cap_bytes: int = 50 * 2**20


@dataclass(frozen=True)
class ProcessOutcome:
    """How the process ended. ``aborted`` is the on_poll reason that stopped it, if any."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    stalled: bool
    killed_after_result: bool
    aborted: str | None
    duration: float
    truncated_bytes: int = 0


def kill_group(pgid: int, grace: float = TERM_GRACE, start_time: float | None = None) -> None:
    """TERM the process group, wait up to ``grace`` for its leader, then KILL the group.

    With ``start_time`` the leader's identity is checked first, so a recycled
    pid is never signalled.
    """
    if start_time is not None:
        try:
            if abs(psutil.Process(pgid).create_time() - start_time) > 0.01:
                return
        except psutil.Error:
            pass  # leader gone; members of its group may remain, signal the group anyway
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _leader_alive(pgid):
        time.sleep(0.01)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _leader_alive(pgid: int) -> bool:
    try:
        return psutil.Process(pgid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# What a Claude Code or Codex session sets for the commands it runs: started from inside
# one, the harness must not hand these on (its agents are sessions of their own). Seen in
# the Bash tool's environment of claude 2.1.332 and codex 0.171.0 (docs/agents.md).
# Credentials and provider settings (ANTHROPIC_*, CLAUDE_CODE_OAUTH_TOKEN,
# CLAUDE_CODE_USE_BEDROCK / _VERTEX, CLAUDE_CODE_MAX_RETRIES, CODEX_HOME...) are kept.
NESTED_SESSION_VARS: Final = frozenset({
    "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_CHILD_SESSION",
    "CLAUDE_CODE_SESSION_ID", "CLAUDE_CODE_SESSION_ATTENDED", "CLAUDE_CODE_EXECPATH",
    "CLAUDE_CODE_MESSAGING_SOCKET", "CLAUDE_CODE_MESSAGING_TOKEN", "CLAUDE_CODE_CHILD_NOTES_DIR",
    "CLAUDE_CODE_SSE_PORT", "CLAUDE_PID", "CLAUDE_EFFORT", "AI_AGENT",
    "CODEX_THREAD_ID", "CODEX_SESSION_ID", "CODEX_TOOL_CALL_ID", "CODEX_CI", "CODEX_VERSION",
    "CODEX_MANAGED_BY_NPM", "CODEX_MANAGED_PACKAGE_ROOT"})
_NESTED_PREFIXES: Final = ("HARNESS_", "CLAUDE_CODE_IDE_", "CODEX_SANDBOX")


def is_nested_marker(name: str) -> bool:
    """True for a variable :func:`clean_env` removes (a parent session's or the harness's)."""
    return name in NESTED_SESSION_VARS or name.startswith(_NESTED_PREFIXES)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an agent: inherited, minus the markers of a parent session and
    the harness's own variables (:func:`is_nested_marker`), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not is_nested_marker(k)}
    env.update(extra or {})
    return env


class _CappedLog:
    """An attempt's log file, unbuffered: what the agent wrote is in the file as soon as it
    is read (``sessions watch`` follows it; a SIGKILLed worker loses nothing read)."""

    def __init__(self, path: Path, cap: int) -> None:
        self.file: BinaryIO = open(path, "ab", buffering=0)
        self.room, self.dropped = cap, 0

    def write(self, data: bytes) -> None:
        kept = data[: max(0, self.room)]
        view = memoryview(kept)
        while view:  # a raw write may be short
            view = view[self.file.write(view) or 0:]
        self.room -= len(kept)
        self.dropped += len(data) - len(kept)

    def close(self) -> None:
        self.file.close()


class SpawnError(Exception):
    """The program could not be started (not found, not executable, bad cwd, an argument
    or variable with a NUL byte)."""

    def __init__(self, argv0: str, exc: OSError | ValueError) -> None:
        self.argv0 = argv0
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        super().__init__(f"cannot start {argv0!r}: {why}")


def run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdout: Path, stderr: Path,
        limits: Limits, poll: float, on_start: Callable[[psutil.Process], None],
        on_poll: Callable[[], str | None], on_line: Callable[[bytes], None] | None = None,
        result_seen: Callable[[], bool] = lambda: False,
        quiet_allowance: Callable[[], float] = lambda: 0.0,
        preexec: Callable[[], None] | None = None, stdin: Path | None = None) -> ProcessOutcome:
    """Run ``argv`` until it exits or is killed for a timeout, stall, abort or result grace.

    ``on_start`` gets the process before it can do anything (see GATE) and must
    record it; ``stdin`` is a file for the agent to read (default: empty).
    ``result_seen`` says whether the agent reported its end (it may take that back:
    a session that goes on); ``quiet_allowance`` is the silence it may keep beyond
    ``stall_after`` right now. Raises SpawnError if it cannot be started at all.
    """
    started = time.monotonic()
    proc = _spawn(argv, cwd=cwd, env=env, preexec=preexec, stdin=stdin)
    out, err = _CappedLog(stdout, limits.log_cap_bytes), _CappedLog(stderr, limits.log_cap_bytes)
    watch = _Watch(proc, limits, started, quiet_allowance)
    try:
        _fp_spawned()
        gate, proc.stdin = proc.stdin, None
        try:
            on_start(psutil.Process(proc.pid))
            assert gate is not None
            try:
                gate.write(b"go\n")
            except BrokenPipeError:
                pass  # it died behind the gate (a limit, a signal): its exit status says
        finally:
            gate.close()  # EOF: an agent not told to go exits at once
        _pump(proc, out, err, poll, watch, on_poll, on_line or (lambda line: None), result_seen)
    finally:
        if proc.poll() is None:  # killed by a verdict, or an exception escaped
            kill_group(proc.pid)
        proc.wait()
        _kill_stragglers(proc.pid)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        out.close()
        err.close()
    code = proc.returncode
    return ProcessOutcome(code if code >= 0 else None, -code if code < 0 else None,
                          watch.timed_out, watch.stalled, watch.after_result, watch.aborted,
                          time.monotonic() - started, out.dropped + err.dropped)


def _spawn(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
           preexec: Callable[[], None] | None, stdin: Path | None) -> subprocess.Popen[bytes]:
    """Start ``argv`` behind the gate, in a new session; SpawnError if it cannot start.

    The program is looked up first (as exec would, on the agent's PATH): behind the
    gate a missing program would only be an exit status 127.
    """
    program = argv[0] if argv else ""
    try:
        found = program if "/" in program else shutil.which(program, path=env.get("PATH"))
    except ValueError as exc:  # a NUL byte in the program name
        raise SpawnError(program, exc) from exc
    if not program or found is None:
        raise SpawnError(program, FileNotFoundError(errno.ENOENT, "not found on PATH"))
    if not os.path.exists(found):
        raise SpawnError(program, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
    if not os.access(found, os.X_OK) or os.path.isdir(found):
        raise SpawnError(program, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    try:
        return subprocess.Popen(
            ["/bin/sh", "-c", GATE, "harness-gate", str(stdin or os.devnull), *argv], cwd=cwd,
            env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
            umask=user_umask())  # the agent writes the user's files, not the harness's
    except (OSError, ValueError) as exc:  # ValueError: "embedded null byte"
        raise SpawnError(program, exc) from exc


@dataclass
class _Watch:
    proc: subprocess.Popen[bytes]
    limits: Limits
    started: float
    allowance: Callable[[], float]
    last_output: float = 0.0
    result_at: float | None = None
    timed_out: bool = False
    stalled: bool = False
    after_result: bool = False
    aborted: str | None = None
    exited_at: float | None = None

    def verdict(self, now: float, abort: str | None, result: bool) -> bool:
        """Decide whether to kill now; record why."""
        if result and self.result_at is None:
            self.result_at = now
        elif not result:
            self.result_at = None  # the session went on after its result (a background task)
        if abort:
            self.aborted = abort
        elif now - self.started > self.limits.timeout:
            self.timed_out = True
        elif self.result_at is not None and now - self.result_at > self.limits.result_grace:
            self.after_result = True
        elif (self.limits.stall_after is not None and self.result_at is None
              and now - max(self.last_output, self.started)
              > self.limits.stall_after + self.allowance()):
            self.stalled = True
        elif self.exited_at is not None and now - self.exited_at > DRAIN_AFTER_EXIT:
            return True  # agent exited; a straggler holds the pipes
        else:
            return False
        return True


def _pump(proc: subprocess.Popen[bytes], out: _CappedLog, err: _CappedLog, poll: float,
          watch: _Watch, on_poll: Callable[[], str | None], on_line: Callable[[bytes], None],
          result_seen: Callable[[], bool]) -> None:
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    for stream, log in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ, log)
    partial = b""
    while True:
        if sel.get_map():
            for key, _ in sel.select(timeout=poll):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                key.data.write(data)
                if key.data is out:
                    watch.last_output = time.monotonic()
                    *lines, partial = (partial + data).split(b"\n")
                    for line in lines:
                        on_line(line)
        else:
            # Both pipes closed but the agent may still be running (GNU sleep and make
            # close stdout before they exit): wait for it, never kill it for that.
            try:
                proc.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                pass
        if watch.exited_at is None and proc.poll() is not None:
            watch.exited_at = time.monotonic()
        if watch.exited_at is not None and not sel.get_map():
            break
        if watch.verdict(time.monotonic(), on_poll(), result_seen()):
            break
    if partial:
        on_line(partial)
    sel.close()


def _kill_stragglers(pgid: int) -> None:
    """Whatever the agent left in its process group (daemons, stuck children) dies with it.

    The group id stays reserved while any member lives, so this cannot hit
    an unrelated process.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
