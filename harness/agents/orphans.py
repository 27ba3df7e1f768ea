"""Processes that outlive their attempt: how they are marked, found and killed.

Every agent (and verify command) starts with its owner in its environment:
the workspace, the worker slot and generation, the item and the attempt. A
marked process whose owner is not a live attempt is an orphan. Three ways to
meet one, from cheap to thorough:

- a worker and the coordinator are child subreapers (prctl), so a process
  that leaves its process group and loses its parent (``setsid cmd &`` in an
  agent) is re-parented to them and shows up in their own children list, a
  single read of ``/proc/self/task/*/children``;
- the coordinator reads the marks of its children each tick;
- at start, a worker and the coordinator read the marks of every process on
  the host (``/proc/*/environ``, ~40 µs a process), for what an earlier
  coordinator or worker left behind.

Linux only (``/proc``); elsewhere the lists are empty and only process
groups protect (runner.kill_group).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ENV_WORKSPACE: Final = "HARNESS_WORKSPACE"
_PR_SET_CHILD_SUBREAPER: Final = 36
_FIELDS: Final = ("HARNESS_WORKER", "HARNESS_GENERATION", "HARNESS_ITEM", "HARNESS_ATTEMPT")


def marks(root: Path, worker: str, generation: str, item: str, attempt: int) -> dict[str, str]:
    """The environment variables that name an agent's owner (also useful to the agent)."""
    return {ENV_WORKSPACE: str(root), "HARNESS_WORKER": worker,
            "HARNESS_GENERATION": generation, "HARNESS_ITEM": item,
            "HARNESS_ATTEMPT": str(attempt)}


@dataclass(frozen=True)
class Marked:
    """A running process that carries an owner's marks."""

    pid: int
    pgid: int
    started: int  # /proc/<pid>/stat start time, clock ticks since boot: pid reuse check
    worker: str
    generation: str
    item: str
    attempt: int


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants; False where the kernel cannot."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children() -> list[int]:
    """The pids of this process's live children (all threads), from /proc."""
    out: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return out


def marked(root: Path, pids: Iterable[int] | None = None) -> list[Marked]:
    """The processes among ``pids`` (default: every process) marked for workspace ``root``."""
    want = str(root).encode()
    entry = f"{ENV_WORKSPACE}=".encode() + want + b"\0"
    if pids is None:
        try:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return []
    out = []
    for pid in pids:
        if pid == os.getpid():
            continue
        raw = _environ_bytes(pid)
        if entry not in raw:  # most processes: no need to split their environment
            continue
        env = _parse_environ(raw)
        if env.get(ENV_WORKSPACE.encode()) != want:
            continue
        stat = _stat(pid)
        if stat is None:
            continue
        values = [env.get(k.encode(), b"").decode(errors="replace") for k in _FIELDS]
        try:
            attempt = int(values[3])
        except ValueError:
            attempt = 0
        out.append(Marked(pid, stat[0], stat[1], values[0], values[1], values[2], attempt))
    return out


def kill(procs: Iterable[Marked]) -> list[Marked]:
    """SIGKILL each process and its process group, if it is still the process found
    (same start time); returns those signalled."""
    done = []
    for p in procs:
        stat = _stat(p.pid)
        if stat is None or stat[1] != p.started:
            continue
        for fn, target in ((os.killpg, p.pgid), (os.kill, p.pid)):
            try:
                fn(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        done.append(p)
    return done


def kill_unowned(root: Path, owned: Callable[[Marked], bool],
                 pids: Iterable[int] | None = None) -> list[Marked]:
    """Kill the marked processes (among ``pids``) that ``owned`` does not claim."""
    return kill(p for p in marked(root, pids) if not owned(p))


def reap(pids: Iterable[int]) -> set[int]:
    """Collect the exit status of those of ``pids`` that are this process's children and
    have ended (never any other pid); return the children still running."""
    running = set()
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                running.add(pid)
        except ChildProcessError:
            continue  # not our child (never was, or collected already)
    return running


def _environ_bytes(pid: int) -> bytes:
    """/proc/<pid>/environ with a NUL after the last entry too; empty if unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:  # gone, or another user's
        return b""
    return raw if raw.endswith(b"\0") else raw + b"\0"


def _parse_environ(raw: bytes) -> dict[bytes, bytes]:
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            env[key] = value
    return env


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time) from /proc/<pid>/stat; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # the command name may hold spaces
    if fields[0] == b"Z":
        return None
    return int(fields[2]), int(fields[19])
