"""The edges (issue 10): symlinks, stray files, git faults, orphans, machine faults.

Each test reproduces one case with real processes and real files, bounded in
time, and checks both what the harness did and what it must not have touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.queue import names
from harness.queue.core import Queue
from harness.queue.invariants import check
from tests.wsutil import events, kill_all, make_workspace, start_coordinator

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ws(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    yield ws
    kill_all(ws)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def cli(ws, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), *args],
                          capture_output=True, text=True, timeout=timeout)


def run_pool(ws, *args: str, timeout: float = 90) -> int:
    proc = start_coordinator(ws, *args)
    try:
        return proc.wait(timeout=timeout)
    finally:
        kill_all(ws, proc)


def in_state(ws, state: str) -> list[str]:
    return sorted(names.parse(e).id for e in names.entries(ws.queue_dir / state))


# -- 1, 2: never act outside the workspace, never follow a link it did not make ------------


def test_gc_leaves_a_symlinked_worktree_slot_and_its_target_alone(ws, tmp_path):
    other = tmp_path / "other-checkout"
    git(ws.root, "worktree", "add", "-q", "--detach", str(other), "main")
    with open(ws.root / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write("*.local\n")
    (other / "notes.local").write_text("the user's ignored notes\n")
    (ws.worktrees_dir / "w9").symlink_to(other)
    result = cli(ws, "gc")
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout and "worktrees/w9" in result.stdout
    assert "symbolic link" in result.stdout
    assert (other / "notes.local").read_text() == "the user's ignored notes\n"
    assert (ws.worktrees_dir / "w9").is_symlink()


@pytest.mark.parametrize("target", ["own-checkout", "empty-dir"])
def test_a_symlinked_slot_is_refused_and_burns_no_item(ws, tmp_path, target):
    if target == "own-checkout":
        link_to = ws.root
    else:
        link_to = tmp_path / "empty"
        link_to.mkdir()
    (ws.worktrees_dir / "w1").symlink_to(link_to)
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text()
                                          + '\n[agent]\npreset = "shell"\n')
    queue = Queue(ws.queue_dir)
    for n in range(3):
        queue.enqueue({"id": f"edit-{n}", "command": f"echo {n} > out-{n}.txt"})
    branch_before = git(ws.root, "symbolic-ref", "HEAD")
    assert run_pool(ws, "--agents", "2") == 0, (ws.root / "coordinator.out").read_text()
    assert in_state(ws, "done") == ["edit-0", "edit-1", "edit-2"]
    assert in_state(ws, "failed") == []
    assert git(ws.root, "symbolic-ref", "HEAD") == branch_before
    if target == "empty-dir":
        assert list(link_to.iterdir()) == []
    refused = [e for e in events(ws) if e["event"] == "slot-refused"]
    assert refused and refused[0]["worker"] == "w1" and "symbolic link" in refused[0]["why"]
    assert not [e for e in events(ws) if e["event"] == "worker-spawn" and e["worker"] == "w1"]
    assert (ws.worktrees_dir / "w1").is_symlink()
    assert check(ws.queue_dir) == []


def test_a_worktree_swapped_for_a_symlink_mid_attempt_is_not_committed_through(ws, tmp_path):
    """The agent itself replaces its worktree by a link to the user's checkout: nothing is
    committed there, the attempt is given back uncounted, the slot refused."""
    marker = tmp_path / "swapped-once"
    swap = (f"if [ ! -e {marker} ]; then touch {marker}; echo stray > stray.txt;"
            f" cd .. && mv \"$HARNESS_WORKER\" \"$HARNESS_WORKER.moved\""
            f" && ln -s {ws.root} \"$HARNESS_WORKER\"; fi; echo ok > done.txt")
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text()
                                          + '\n[agent]\npreset = "shell"\n')
    Queue(ws.queue_dir).enqueue({"id": "swapper", "command": swap})
    head_before = git(ws.root, "rev-parse", "HEAD")
    assert run_pool(ws, "--agents", "2") == 0, (ws.root / "coordinator.out").read_text()
    assert in_state(ws, "done") == ["swapper"]
    assert git(ws.root, "rev-parse", "HEAD") == head_before
    assert not (ws.root / "stray.txt").exists()
    ends = [e for e in events(ws) if e["event"] == "attempt-end"]
    assert [e["reason"] for e in ends] == ["released", "succeeded"]
    assert [e["worker"] for e in events(ws) if e["event"] == "slot-refused"][:1] != []
    assert names.parse(names.entries(ws.queue_dir / "done")[0]).counted == 1
