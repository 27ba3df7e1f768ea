"""Helpers for tests that run a real coordinator and workers in a temporary workspace.

Every process a test starts is recorded (the coordinator's Popen, and the
worker and agent pids the workspace's own event log records) and killed by
pid or process group at teardown, never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import psutil

from harness.cli.demo import make_repo
from tests.procs import wait_for  # noqa: F401  (re-exported for the tests)
from harness.workspace import Workspace

FAST_CONFIG = """\
[run]
tick = 0.05
heartbeat_interval = 0.1
stale_after = {stale_after}
stale_kill_grace = {stale_kill_grace}
orphan_grace = 1.0
start_timeout = 10
shutdown_grace = {shutdown_grace}
coordinator_gone_after = {coordinator_gone_after}
backoff_base = 0.05
backoff_max = 0.2
max_attempts = {max_attempts}
max_consecutive_failures = 0
memory_floor_mb = 0
"""


def make_workspace(root: Path, extra: str = "", **overrides: Any) -> Workspace:
    """A git repo with a fast harness.toml; ``extra`` is appended TOML ([agent], [git] ...)."""
    from harness.agents.prompts import DEFAULT_BOOTSTRAP

    settings = {"stale_after": 2.0, "stale_kill_grace": 30.0, "shutdown_grace": 2.0,
                "coordinator_gone_after": 30.0, "max_attempts": 3, **overrides}
    make_repo(root)
    (root / "harness.toml").write_text(FAST_CONFIG.format(**settings) + extra)
    (root / "prompts").mkdir(exist_ok=True)
    (root / "prompts" / "bootstrap.md").write_text(DEFAULT_BOOTSTRAP)
    ws = Workspace.at(root)
    ws.make_dirs()
    return ws


def start_coordinator(ws: Workspace, *args: str) -> subprocess.Popen[bytes]:
    log = open(ws.root / "coordinator.out", "ab")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run", *args],
            stdout=log, stderr=log, start_new_session=True)


def events(ws: Workspace) -> list[dict[str, Any]]:
    """Every event of the workspace, all hosts' logs merged in time order (a line that is
    not JSON fails the test: no writer may tear another's line)."""
    logs = [[orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            for path in ws.event_files()]
    if len(logs) == 1:
        return logs[0]  # one file: its own order, which is the order of the writes
    return sorted((e for log in logs for e in log), key=lambda e: e["ts"])


def recorded_pids(ws: Workspace) -> set[tuple[int, float | None]]:
    """(pid, start time or None) of every worker and agent the workspace's log recorded."""
    out: set[tuple[int, float | None]] = set()
    for ev in events(ws):
        if ev["event"] == "worker-spawn":
            out.add((ev["pid"], None))
        elif ev["event"] == "worker-start":
            out.add((ev["pid"], None))
        elif ev["event"] == "agent-start":
            out.add((ev["agent_pid"], ev.get("agent_start")))
    return out


def gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (exited; an unreaped zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_recorded(ws: Workspace) -> list[int]:
    alive = []
    for pid, start in recorded_pids(ws):
        try:
            proc = psutil.Process(pid)
            if start is not None and abs(proc.create_time() - start) > 0.01:
                continue
            if proc.status() != psutil.STATUS_ZOMBIE and str(ws.root) in " ".join(
                    proc.cmdline() + [proc.cwd()]):
                alive.append(pid)
        except psutil.Error:
            continue
    return alive


def kill_all(ws: Workspace, coordinator: subprocess.Popen[bytes] | None = None) -> None:
    if coordinator is not None and coordinator.poll() is None:
        os.killpg(coordinator.pid, signal.SIGKILL)
        coordinator.wait()
    for pid in live_recorded(ws):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def heartbeat_of(ws: Workspace, worker: str) -> dict[str, Any] | None:
    from harness.liveness import heartbeat

    return heartbeat.read(ws.heartbeat_file(worker))
