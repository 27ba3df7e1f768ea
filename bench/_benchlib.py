"""Shared helpers for the process-level benchmarks (scaling, overhead, recovery, status_100k).

- ``machine_line``: what the figures were measured on (cpus, python, git, file system,
  load average; the machine is shared with other sessions, so the load is printed
  at the start and at the end of each benchmark).
- ``Bench``: owns the temp dirs and every process a benchmark starts. It records the
  coordinators it starts (Popen, own session) and, from each workspace's event log,
  every worker and agent pid (with the agent's start time), and at ``close()`` kills
  them by pid / process group after an identity check, never by name. ``close()``
  also removes the temp dirs. SIGINT/SIGTERM during a run unwind through it.
- ``make_workspace``: a git repo (harness.cli.demo.make_repo) with a fast harness.toml.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import orjson  # noqa: E402
import psutil  # noqa: E402

from harness.cli.demo import make_repo  # noqa: E402
from harness.workspace import Workspace  # noqa: E402
from tests.procs import wait_for  # noqa: E402,F401  (one poller for tests and benchmarks)

RUN_DEFAULTS: dict[str, Any] = {
    "tick": 0.05,
    "heartbeat_interval": 0.2,
    "memory_floor_mb": 0,
    "max_consecutive_failures": 0,
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def config_text(run: dict[str, Any] | None = None, agent_preset: str = "shell") -> str:
    settings = {**RUN_DEFAULTS, **(run or {})}
    lines = ["[run]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
    lines += ["", "[agent]", f'preset = "{agent_preset}"', ""]
    return "\n".join(lines)


def make_workspace(root: Path, run: dict[str, Any] | None = None) -> Workspace:
    """A git repo on main with one commit and harness.toml ([run] RUN_DEFAULTS + ``run``)."""
    make_repo(root, config_text(run))
    ws = Workspace.at(root)
    ws.make_dirs()
    return ws


# -- machine ---------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts)."""
    path = Path(os.path.realpath(path))
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1]
                if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) \
                        and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return f"{kind} ({best or '?'})"


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def code_line() -> str:
    """The commit measured, and whether harness/ had uncommitted changes (others work here)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "harness").splitlines()]
    return (f"code: {head}" + (f" + uncommitted changes in {len(dirty)} harness/ file(s)"
                               if dirty else " (harness/ clean)"))


def machine_line(tmp: Path) -> str:
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.split()[-1]
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return (f"machine: {cpus} cpus (nproc), python {platform.python_version()}"
            f" ({sys.executable}), git {git}, temp fs {fs_type(tmp)},"
            f" load average {load_avg()} (1/5/15 min; the machine is shared with other"
            " sessions, so the load is not only this benchmark)\n" + code_line())


# -- events ----------------------------------------------------------------------


def events(ws: Workspace) -> list[dict[str, Any]]:
    try:
        raw = ws.events_file.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return out


# -- stats -----------------------------------------------------------------------


def med(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


# -- process and temp-dir ownership ------------------------------------------------


class Interrupted(Exception):
    pass


class Bench:
    """Temp dirs and processes of one benchmark run; ``close()`` ends and removes them all."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.prefix, self.keep = prefix, keep
        self.dirs: list[Path] = []
        self.coordinators: list[tuple[subprocess.Popen[bytes], Workspace]] = []
        self.workspaces: list[Workspace] = []
        self.extra_pids: list[tuple[int, float]] = []  # (pid, create_time) started directly
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Bench:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        for s, h in self._old.items():
            signal.signal(s, h)

    def _on_signal(self, signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    def tempdir(self, tag: str = "") -> Path:
        d = Path(tempfile.mkdtemp(prefix=f"{self.prefix}{tag}-"))
        self.dirs.append(d)
        return d

    def workspace(self, tag: str, run: dict[str, Any] | None = None) -> Workspace:
        ws = make_workspace(self.tempdir(tag) / "ws", run)
        self.workspaces.append(ws)
        return ws

    def start_coordinator(self, ws: Workspace, *args: str) -> subprocess.Popen[bytes]:
        with open(ws.root / "coordinator.out", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run", *args],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=str(REPO_ROOT))
        self.coordinators.append((proc, ws))
        if ws not in self.workspaces:
            self.workspaces.append(ws)
        return proc

    def stop_coordinator(self, proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        """SIGTERM (its own graceful shutdown), then SIGKILL its group after ``grace``."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.wait()

    def _recorded(self, ws: Workspace) -> set[tuple[int, float | None]]:
        out: set[tuple[int, float | None]] = set()
        for ev in events(ws):
            kind = ev.get("event")
            if kind in ("worker-spawn", "worker-start") and ev.get("pid"):
                out.add((int(ev["pid"]), None))
            elif kind == "agent-start" and ev.get("agent_pid"):
                out.add((int(ev["agent_pid"]), ev.get("agent_start")))
        return out

    def live_recorded(self, ws: Workspace) -> list[int]:
        """Recorded worker/agent pids still running and still ours (identity + cwd/cmdline)."""
        alive = []
        for pid, start in self._recorded(ws):
            try:
                proc = psutil.Process(pid)
                if start is not None and abs(proc.create_time() - start) > 0.01:
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if str(ws.root) in " ".join(proc.cmdline() + [proc.cwd()]):
                    alive.append(pid)
            except psutil.Error:
                continue
        return alive

    def kill_workspace(self, ws: Workspace) -> None:
        for pid in self.live_recorded(ws):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def close(self) -> None:
        for proc, _ws in self.coordinators:
            if proc.poll() is None:
                kids = []
                try:
                    kids = [(c.pid, c.create_time())
                            for c in psutil.Process(proc.pid).children(recursive=True)]
                except psutil.Error:
                    pass
                _killpg(proc.pid)
                proc.wait()
                self.extra_pids.extend(kids)
        for ws in self.workspaces:
            self.kill_workspace(ws)
        for pid, start in self.extra_pids:
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - start) >= 0.01:
                    continue
                try:
                    os.killpg(pid, signal.SIGKILL)  # a group leader: its whole group
                except ProcessLookupError:
                    os.kill(pid, signal.SIGKILL)  # not a group leader: the process itself
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
        # a second pass: anything a dying coordinator spawned in between
        time.sleep(0.1)
        for ws in self.workspaces:
            self.kill_workspace(ws)
        if self.keep:
            for d in self.dirs:
                print(f"kept: {d}")
        else:
            for d in self.dirs:
                shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


def _killpg(pgid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
