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


# -- 5, 6, 7: no stray file in the queue hangs, crashes or blocks a run --------------------


def queue_name(item_id: str) -> str:
    return str(names.ItemName(5, names.next_order(), item_id, 1))


def shell_workspace(ws, real: bool = True):
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text()
                                          + '\n[agent]\npreset = "shell"\n')
    if real:
        Queue(ws.queue_dir).enqueue({"id": "real", "command": "echo real > real.txt"})


def plant(ws, kind: str, where: Path) -> None:
    if kind == "fifo":
        os.mkfifo(where)
    elif kind == "dangling-symlink":
        where.symlink_to(ws.root / "no-such-file")
    elif kind == "symlink-to-passwd":
        where.symlink_to("/etc/passwd")
    elif kind == "directory":
        where.mkdir()
        (where / "inside.json").write_text('{"title": "x"}')


JUNK = ["fifo", "dangling-symlink", "symlink-to-passwd", "directory"]


@pytest.mark.parametrize("kind", JUNK)
def test_junk_in_pending_is_moved_aside_and_the_run_ends(ws, kind):
    shell_workspace(ws)
    named = queue_name(f"junk-{kind}")
    plant(ws, kind, ws.queue_dir / "pending" / named)
    plant(ws, kind, ws.queue_dir / "pending" / f"stray-{kind}")
    assert run_pool(ws, "--agents", "1", timeout=60) == 0, (ws.root / "coordinator.out").read_text()
    assert in_state(ws, "done") == ["real"]
    junk = sorted(os.listdir(ws.queue_dir / "junk"))
    assert named in junk and f"stray-{kind}" in junk, junk
    assert f"{named}.reason" in junk and f"stray-{kind}.reason" in junk
    assert os.path.exists("/etc/passwd")
    reported = [e for e in events(ws) if e["event"] == "junk"]
    assert len(reported) == 2, reported  # once each
    assert check(ws.queue_dir) == []


@pytest.mark.parametrize("kind", JUNK)
def test_fsck_repair_moves_junk_aside_in_bounded_time(ws, kind):
    Queue(ws.queue_dir)
    plant(ws, kind, ws.queue_dir / "pending" / queue_name(f"junk-{kind}"))
    plant(ws, kind, ws.queue_dir / "pending" / f"stray-{kind}")
    plant(ws, kind, ws.queue_dir / "claimed" / queue_name(f"claimed-{kind}"))
    before = cli(ws, "fsck", "--json", timeout=30)
    assert before.returncode == 1 and "junk" in before.stdout
    repaired = cli(ws, "fsck", "--repair", timeout=30)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "junk" in repaired.stdout
    assert len([e for e in os.listdir(ws.queue_dir / "junk") if not e.endswith(".reason")]) == 3
    after = cli(ws, "fsck", timeout=30)
    assert after.returncode == 0 and "3 junk" in after.stdout, after.stdout


def test_a_file_that_cannot_be_linked_or_moved_neither_crashes_nor_holds_the_run(ws):
    """An immutable file (chattr +i: link and rename both fail with EPERM, as for another
    user's file under fs.protected_hardlinks) is reported once and left where it is."""
    shell_workspace(ws)
    stuck = ws.queue_dir / "pending" / "immutable.json"
    stuck.write_text("not an item")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root on ext2/3/4, xfs, btrfs)")
    try:
        assert run_pool(ws, "--agents", "1", timeout=60) == 0, \
            (ws.root / "coordinator.out").read_text()
        assert in_state(ws, "done") == ["real"]
        reported = [e for e in events(ws) if e["event"] == "junk"]
        assert len(reported) == 1 and "Operation not permitted" in reported[0]["action"]
        assert cli(ws, "fsck", "--repair", timeout=30).returncode in (0, 1)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)])


# -- 8: a NUL byte never reaches a worker as a dead worker -----------------------------------


@pytest.mark.parametrize("field, value", [("command", "echo a\x00b"), ("prompt", "fix\x00it"),
                                          ("command", ["echo", "a\x00"]),
                                          ("meta", {"note": "x\x00"})])
def test_enqueue_refuses_a_nul_byte_naming_the_field(ws, field, value):
    from harness.queue.item import InvalidItem

    with pytest.raises(InvalidItem, match=f"{field}.*NUL"):
        Queue(ws.queue_dir).enqueue({"id": "nul", "title": "t", field: value})
    assert names.entries(ws.queue_dir / "pending") == []


def test_a_malformed_item_that_reaches_a_worker_fails_with_its_reason(ws):
    """A NUL in a hand-linked item bypasses enqueue: the attempt fails with the real reason,
    the worker lives on (no restart), the item is dead-lettered after its attempts."""
    shell_workspace(ws)
    item = ws.queue_dir / "ids" / "nul-cmd"
    item.write_bytes(b'{"id":"nul-cmd","command":"echo a\\u0000b","max_attempts":1}')
    os.link(item, ws.queue_dir / "pending" / queue_name("nul-cmd"))
    assert run_pool(ws, "--agents", "1", timeout=60) == 1
    reason = (ws.queue_dir / "failed").glob("*nul-cmd*.reason")
    assert "null byte" in next(reason).read_text()
    assert not [e for e in events(ws) if e["event"] == "worker-dead" and
                e.get("why") == "worker died"]


# -- 3: never report done what is not in git ---------------------------------------------------


def old_lock(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    os.utime(path, (1_000_000_000, 1_000_000_000))  # older than any running git


def test_a_stale_ref_lock_is_removed_and_the_item_lands_on_its_branch(ws):
    shell_workspace(ws)
    lock = ws.root / ".git" / "refs" / "heads" / "harness" / "real.lock"
    old_lock(lock)
    assert run_pool(ws, "--agents", "1") == 0, (ws.root / "coordinator.out").read_text()
    assert in_state(ws, "done") == ["real"]
    assert git(ws.root, "rev-parse", "--verify", "harness/real")
    assert not lock.exists()
    removed = [e for e in events(ws) if e["event"] == "stale-lock-removed"]
    assert len(removed) == 1 and removed[0]["lock"].endswith("harness/real.lock")


def test_a_live_ref_lock_fails_the_attempt_and_the_retry_lands(ws):
    """A lock that a running git may own is never broken: the attempt fails with git's
    message (not done, not a dead worker), the retry after the lock is gone succeeds."""
    shell_workspace(ws)
    holder = subprocess.Popen(["git", "cat-file", "--batch"], cwd=ws.root, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL)
    lock = ws.root / ".git" / "refs" / "heads" / "harness" / "real.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")  # newer than the running git: it may be its lock
        proc = start_coordinator(ws, "--agents", "1")
        from tests.wsutil import wait_for
        first = wait_for(lambda: [e for e in events(ws) if e["event"] == "attempt-end"], 30,
                         "the first attempt to end")
        assert first[0]["reason"] == "failed" and "real.lock" in first[0]["detail"]
        assert lock.exists()
        lock.unlink()
        assert proc.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
        kill_all(ws)
    assert in_state(ws, "done") == ["real"]
    assert git(ws.root, "rev-parse", "--verify", "harness/real")
    assert not [e for e in events(ws) if e["event"] == "worker-dead"
                and e.get("why") == "worker died"]


def test_fsck_reports_a_done_item_missing_from_git_and_repair_restores_it(ws):
    shell_workspace(ws)
    assert run_pool(ws, "--agents", "1") == 0
    git(ws.root, "branch", "-D", "harness/real")
    report = cli(ws, "fsck")
    assert report.returncode == 1 and "result-missing: real" in report.stdout, report.stdout
    repaired = cli(ws, "fsck", "--repair")
    assert repaired.returncode == 0 and "branch-reconciled" in repaired.stdout, repaired.stdout
    assert git(ws.root, "rev-parse", "harness/real") == git(ws.root, "rev-parse",
                                                            "harness-attempts/real/1")


def test_restart_reports_a_reconcile_failure_not_a_false_success(ws):
    """A done item whose branch git will not write (a lock a running git may own) is
    reported as branch-reconcile-failed, never as branch-reconciled."""
    shell_workspace(ws)
    assert run_pool(ws, "--agents", "1") == 0
    git(ws.root, "branch", "-D", "harness/real")
    holder = subprocess.Popen(["git", "cat-file", "--batch"], cwd=ws.root, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL)
    lock = ws.root / ".git" / "refs" / "heads" / "harness" / "real.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")
        assert run_pool(ws, "--agents", "1") == 0
    finally:
        holder.kill()
        holder.wait()
    kinds = [e["event"] for e in events(ws)]
    assert "branch-reconcile-failed" in kinds and "branch-reconciled" not in kinds


# -- 4: never let an orphan write --------------------------------------------------------------


def test_an_agent_cannot_start_before_its_worker_recorded_it(ws, tmp_path):
    """The worker is SIGKILLed right after spawning the agent, before its heartbeat names it
    (failpoint agent.spawned): the agent never runs a line."""
    shell_workspace(ws, real=False)
    ran = tmp_path / "agent-ran"
    Queue(ws.queue_dir).enqueue({"id": "gated", "command": f"touch {ran}; sleep 30",
                                 "max_attempts": 1})
    env = {**os.environ, "HARNESS_FAILPOINTS": "agent.spawned=kill"}
    log = open(ws.root / "coordinator.out", "ab")
    with log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                                 "run", "--agents", "1"], stdout=log, stderr=log, env=env,
                                start_new_session=True)
    try:
        assert proc.wait(timeout=90) == 1
    finally:
        kill_all(ws, proc)
    assert not ran.exists()
    assert in_state(ws, "failed") == ["gated"]
    from harness.agents import orphans
    assert orphans.marked(ws.root) == []


def test_an_escaped_agent_process_is_killed_and_does_not_outlive_its_attempt(ws, tmp_path):
    """A process that leaves the agent's process group (setsid) and outlives the agent is
    killed before the worker's next attempt, and reported."""
    shell_workspace(ws)
    pidfile = tmp_path / "escapee.pid"
    queue = Queue(ws.queue_dir)
    queue.enqueue({"id": "escaper", "priority": 0,
                   "command": f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' &"
                              f" while [ ! -s {pidfile} ]; do sleep 0.01; done"})
    queue.enqueue({"id": "next", "priority": 9, "command": "echo next"})
    assert run_pool(ws, "--agents", "1") == 0, (ws.root / "coordinator.out").read_text()
    escapee = int(pidfile.read_text())
    from tests.wsutil import gone
    assert gone(escapee)
    killed = [e for e in events(ws) if e["event"] == "orphans-killed"]
    assert killed and escapee in killed[0]["pids"] and killed[0]["owners"] == ["escaper~1"]
    order = [e["event"] for e in events(ws) if e["event"] in ("orphans-killed", "claim")]
    assert order.index("orphans-killed") < len(order) - 1  # before the next item's claim


def test_a_dead_workers_agent_is_killed_by_the_coordinator(ws, tmp_path):
    """SIGKILL the worker while its agent runs: the agent is re-parented to the coordinator
    (a subreaper) and killed; the retry runs alone."""
    shell_workspace(ws)
    started = tmp_path / "starts"
    Queue(ws.queue_dir).enqueue({"id": "long", "command": f"echo x >> {started}; sleep 300"})
    proc = start_coordinator(ws, "--agents", "1")
    try:
        from tests.wsutil import heartbeat_of, wait_for
        hb = wait_for(lambda: (h := heartbeat_of(ws, "w1")) and h.get("agent_pid") and h, 30,
                      "the agent to start")
        wait_for(lambda: started.exists(), 30, "the agent to run")
        agent = hb["agent_pid"]
        os.kill(hb["pid"], 9)
        from tests.wsutil import gone
        wait_for(lambda: gone(agent), 30, "the orphaned agent to be killed")
        wait_for(lambda: len(started.read_text().split()) == 2, 30, "the retry to start")
    finally:
        kill_all(ws, proc)


# -- 11: the transcript reaches the file as it arrives -------------------------------------


def test_the_stream_is_on_disk_while_the_agent_runs_and_after_its_worker_is_killed(ws):
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text()
                                          + '\n[agent]\npreset = "sim"\n')
    Queue(ws.queue_dir).enqueue({"id": "slow", "title": "slow",
                                 "meta": {"sim": {"behavior": "slow", "seconds": 60}}})
    stream = ws.attempt_dir("slow", 1) / "events.jsonl"
    proc = start_coordinator(ws, "--agents", "1")
    try:
        from tests.wsutil import heartbeat_of, wait_for
        hb = wait_for(lambda: (h := heartbeat_of(ws, "w1")) and (h.get("turns") or 0) >= 3
                      and h, 30, "the agent to emit a few turns")
        lines = stream.read_bytes().splitlines()
        assert len(lines) >= 3, "events.jsonl lags the stream while the agent runs"
        os.kill(hb["pid"], 9)
        wait_for(lambda: any(e["event"] == "worker-dead" for e in events(ws)), 30,
                 "the worker's death to be noticed")
        assert stream.read_bytes().splitlines()[:len(lines)] == lines
    finally:
        kill_all(ws, proc)


# -- 9: faults of the machine are survived, not obeyed ----------------------------------------


def chattr(flag: str, path: Path) -> None:
    if subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr is not available here (needs root on ext2/3/4, xfs, btrfs)")


def wait_text(path: Path, text: str, timeout: float, what: str) -> None:
    from tests.wsutil import wait_for
    wait_for(lambda: path.exists() and text in path.read_text(errors="replace"), timeout, what)


@pytest.fixture
def tmpfs_ws(tmp_path):
    """A workspace on a 48 MiB tmpfs of its own, so the test can fill the disk for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    ws = make_workspace(mnt / "ws", stale_after=60.0)
    try:
        yield ws
    finally:
        kill_all(ws)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros into ``path`` until the filesystem is full."""
    import errno
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_full_disk_freed_seconds_later_stops_nothing_and_loses_nothing(tmpfs_ws, tmp_path):
    ws = tmpfs_ws
    release = tmp_path / "release"
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text()
                                          + '\n[agent]\npreset = "shell"\n')
    queue = Queue(ws.queue_dir)
    for n in range(2):
        queue.enqueue({"id": f"held-{n}", "command": f"while [ ! -f {release} ]; do sleep 0.05;"
                                                      f" done; echo {n} > out.txt"})
    out = tmp_path / "coordinator.out"
    with open(out, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                                 "run", "--agents", "2"], stdout=log, stderr=log,
                                start_new_session=True)
    try:
        from tests.wsutil import heartbeat_of, wait_for
        wait_for(lambda: all((heartbeat_of(ws, w) or {}).get("agent_pid") for w in ("w1", "w2")),
                 30, "both agents to run")
        fill(ws.root / "filler")
        wait_text(out, "the disk is full", 30, "the coordinator to report the full disk")
        assert proc.poll() is None
        (ws.root / "filler").unlink()
        wait_text(out, "writes succeed again", 30, "the coordinator to see the disk freed")
        release.touch()
        assert proc.wait(timeout=60) == 0, out.read_text()
    finally:
        kill_all(ws, proc)
    assert in_state(ws, "done") == ["held-0", "held-1"]
    kinds = [e["event"] for e in events(ws)]
    assert kinds.count("coordinator-start") == 1
    assert not [e for e in events(ws) if e["event"] == "worker-dead"], \
        "\n".join(map(str, events(ws))) + (ws.locks_dir / "w1.log").read_text() + \
        (ws.locks_dir / "w2.log").read_text()
    fault = [e for e in events(ws) if e["event"] == "write-fault"]
    assert fault and any("No space left" in v for v in fault[0]["errors"].values()), fault


def test_workers_back_off_while_claimed_is_read_only_and_claim_when_it_is_writable(ws):
    """claimed/ made immutable under a running pool (chattr +i: every rename into it fails
    with EPERM, as on a read-only mount): the worker backs off, nothing is burned."""
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text()
                                          + '\n[agent]\npreset = "shell"\n')
    claimed = ws.queue_dir / "claimed"
    proc = start_coordinator(ws, "--agents", "1", "--forever")
    from tests.wsutil import heartbeat_of, wait_for
    try:
        wait_for(lambda: (heartbeat_of(ws, "w1") or {}).get("state") == "idle", 30,
                 "the worker to start")
        chattr("+i", claimed)
        try:
            Queue(ws.queue_dir).enqueue({"id": "real", "command": "echo real"})
            wait_text(ws.locks_dir / "w1.log", "claim:", 30, "the worker to report the claim")
            assert "Operation not permitted" in (ws.locks_dir / "w1.log").read_text()
            assert in_state(ws, "pending") == ["real"] and proc.poll() is None
        finally:
            subprocess.run(["chattr", "-i", str(claimed)])
        wait_for(lambda: in_state(ws, "done") == ["real"], 30, "the item to run")
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + 15
    finally:
        kill_all(ws, proc)
    kinds = [e["event"] for e in events(ws)]
    assert "write-fault-cleared" in kinds and "worker-dead" not in kinds


def test_the_pool_pauses_itself_while_its_writes_fail_and_resumes_after(ws):
    (ws.root / "harness.toml").write_text(
        (ws.root / "harness.toml").read_text().replace("[run]\n", "[run]\nfault_pause_after = 0.5\n")
        + '\n[agent]\npreset = "shell"\n')
    proc = start_coordinator(ws, "--agents", "1", "--forever")
    from tests.wsutil import heartbeat_of, wait_for
    try:
        wait_for(lambda: ws.metrics_file.exists() and (heartbeat_of(ws, "w1") or {}).get("state")
                 == "idle", 30, "the pool to start")
        chattr("+i", ws.metrics_file)  # the coordinator's every write of it now fails
        try:
            wait_for(lambda: "auto-resume: write-fault" in (ws.interrupt_reason() or ""), 30,
                     "the pool to pause itself")
            wait_for(lambda: (heartbeat_of(ws, "w1") or {}).get("state") == "paused", 30,
                     "the worker to see the pause")
            Queue(ws.queue_dir).enqueue({"id": "after", "command": "echo after"})
            assert in_state(ws, "pending") == ["after"]
        finally:
            subprocess.run(["chattr", "-i", str(ws.metrics_file)])
        wait_for(lambda: ws.interrupt_reason() is None, 30, "the pool to resume by itself")
        wait_for(lambda: in_state(ws, "done") == ["after"], 30, "the item to run")
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + 15
    finally:
        kill_all(ws, proc)
    fault = [e for e in events(ws) if e["event"] == "write-fault"]
    assert fault and fault[0]["resumed"] is True


# -- 10: a step of the wall clock neither stalls nor skips a delay ----------------------------


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_wall_clock_step_moves_retries_and_the_quota_pause_with_it(ws, step):
    """The coordinator in-process with injected clocks: the wall clock steps by an hour
    between two ticks, the monotonic clock does not."""
    from harness import config
    from harness.pool.coordinator import Coordinator
    from tests.conftest import FakeClock

    cfg = config.load(ws.config_file, {"run": {"agents": 0, "backoff_base": 60.0,
                                               "backoff_max": 60.0}})
    wall, mono = FakeClock(1_800_000_000.0), FakeClock(5_000.0)
    coord = Coordinator(ws, cfg, forever=True, clock=mono, wall=wall)
    coord.start()
    try:
        coord.queue.enqueue({"id": "retry-me", "command": "false"})
        coord.queue.claim().fail("failed once")  # waiting/, due in 60 s (wall)
        ws.pause("rate limited", resume_at=wall() + 100)
        coord.tick()
        wall.advance(step)
        coord.tick()
        step_events = [e for e in events(ws) if e["event"] == "clock-step"]
        assert len(step_events) == 1 and step_events[0]["seconds"] == step
        assert step_events[0]["shifted"] == 1
        assert abs(ws.resume_at() - (wall() + 100)) < 1
        for clock in (wall, mono):
            clock.advance(55)
        coord.tick()
        assert in_state(ws, "waiting") == ["retry-me"], "promoted early: the step skipped it"
        for clock in (wall, mono):
            clock.advance(10)
        coord.tick()
        assert in_state(ws, "pending") == ["retry-me"], "not promoted: the step stalled it"
    finally:
        coord.shutdown()
        coord._finish()


# -- 12: the files the harness writes are private --------------------------------------------


def modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[str(path.relative_to(root))] = path.stat().st_mode & 0o7777
    return out


def run_under_umask_022(ws) -> int:
    log = open(ws.root / "coordinator.out", "ab")
    with log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                                 "run", "--agents", "1"], stdout=log, stderr=log,
                                start_new_session=True, umask=0o022)
    try:
        return proc.wait(timeout=60)
    finally:
        kill_all(ws, proc)


@pytest.mark.parametrize("shared", [False, True])
def test_logs_and_state_are_private_under_umask_022(tmp_path, shared):
    root = tmp_path / "ws"
    root.mkdir(mode=0o755)
    ws = make_workspace(root)
    for d in (ws.state_dir, ws.logs_dir, ws.queue_dir, ws.worktrees_dir):
        subprocess.run(["rm", "-rf", str(d)], check=True)  # made by the test; make them anew
    extra = "shared_queue = true\n" if shared else ""
    (root / "harness.toml").write_text((root / "harness.toml").read_text().replace(
        "[run]\n", "[run]\n" + extra) + '\n[agent]\npreset = "sim"\n')
    enqueue = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(root),
                              "enqueue", "--id", "secret", "--prompt", "the token is hunter2"],
                             capture_output=True, text=True, umask=0o022)
    assert enqueue.returncode == 0, enqueue.stderr
    assert run_under_umask_022(ws) == 0, (root / "coordinator.out").read_text()
    found = modes(root)
    for path, mode in found.items():
        top = path.split("/")[0]
        if top in ("logs", "state"):
            wanted = 0o700 if (root / path).is_dir() else 0o600
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
            assert mode == wanted or not (root / path).is_dir(), f"{path} is {oct(mode)}"
        elif top == "queue":
            if shared:
                want = 0o2770 if (root / path).is_dir() else 0o660
                assert mode == want, f"{path} is {oct(mode)}, want {oct(want)}"
            else:
                assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    assert found["logs/secret/1/prompt.md"] == 0o600
    assert found["state/events.jsonl"] == 0o600
    # The agent's and git's files in the worktree keep the user's umask.
    wt_files = [m for p, m in found.items() if p.startswith("worktrees/w1/")
                and not p.startswith("worktrees/w1/.git") and (root / p).is_file()]
    assert wt_files and all(m & 0o044 == 0o044 for m in wt_files)


# -- 13: retention --------------------------------------------------------------------------


def age_results(ws, item_id: str, days: float) -> None:
    import orjson
    for d in (ws.logs_dir / item_id).iterdir():
        result = orjson.loads((d / "result.json").read_bytes())
        result["ended_at"] = result["ended_at"] - days * 86400
        (d / "result.json").write_bytes(orjson.dumps(result))


def test_gc_prunes_old_items_logs_and_branches_but_no_unmerged_result_or_failure(ws):
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text()
                                          + '\n[agent]\npreset = "shell"\n')
    queue = Queue(ws.queue_dir)
    queue.enqueue({"id": "merged", "command": "echo merged > merged.txt"})
    queue.enqueue({"id": "unmerged", "command": "echo unmerged > unmerged.txt"})
    queue.enqueue({"id": "broken", "command": "exit 3", "max_attempts": 2})
    queue.enqueue({"id": "recent", "command": "echo recent > recent.txt"})
    assert run_pool(ws, "--agents", "1") == 1  # "broken" fails
    git(ws.root, "merge", "-q", "--no-edit", "harness/merged")
    for item_id in ("merged", "unmerged", "broken"):
        age_results(ws, item_id, 40)
    branches = set(git(ws.root, "for-each-ref", "--format=%(refname:short)",
                       "refs/heads/harness/", "refs/heads/harness-attempts/").split())
    dry = cli(ws, "gc", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert set(git(ws.root, "for-each-ref", "--format=%(refname:short)", "refs/heads/harness/",
                   "refs/heads/harness-attempts/").split()) == branches
    result = cli(ws, "gc")
    assert result.returncode == 0, result.stderr
    left = set(git(ws.root, "for-each-ref", "--format=%(refname:short)", "refs/heads/harness/",
                   "refs/heads/harness-attempts/").split())
    assert left == {"harness/unmerged", "harness/recent", "harness-attempts/recent/1",
                    "harness-attempts/broken/1", "harness-attempts/broken/2"}, left
    assert not (ws.logs_dir / "merged").exists() and not (ws.logs_dir / "unmerged").exists()
    assert (ws.logs_dir / "broken").exists() and (ws.logs_dir / "recent").exists()
    assert "harness/merged" in result.stdout and "merged into main" in result.stdout
    asked = cli(ws, "gc", "--include-failed")
    assert asked.returncode == 0
    assert not (ws.logs_dir / "broken").exists()
    assert "harness-attempts/broken/1" not in git(ws.root, "branch", "--list", "harness-*")
