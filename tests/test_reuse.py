"""harness.repo.reuse / snapshot / refstream: an attempt that changes nothing runs no git
process, and every change an agent can make is still seen, against real git.

The reference in every case is what plain git says of the same tree (``git status``),
so a shortcut that misses a change fails here.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.repo import locks, refstream, reuse, snapshot, worktrees
from harness.repo.refstream import RefRejected, RefStream
from tests.test_worktrees import git, new_repo

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    r = new_repo(tmp_path, monkeypatch)
    (r / "src").mkdir()
    (r / "src" / "a.txt").write_text("v1\n")
    (r / "run.sh").write_text("#!/bin/sh\n")
    (r / ".gitignore").write_text("*.log\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    return r


@pytest.fixture
def wt(repo, tmp_path):
    return worktrees.ensure_worktree(repo, tmp_path / "wt", "main")


@pytest.fixture
def memo():
    m = reuse.Reuse()
    yield m
    m.close()


@pytest.fixture
def gits(monkeypatch):
    """The git subcommands worktrees runs as processes, in order."""
    calls: list[str] = []
    real = worktrees._git

    def counting(args, cwd, **kw):
        calls.append(args[0])
        return real(args, cwd, **kw)

    monkeypatch.setattr(worktrees, "_git", counting)
    return calls


def cycle(repo: Path, wt: Path, memo: reuse.Reuse, n: int) -> str:
    """One no-change item: start, (agent does nothing), commit, accept."""
    base = worktrees.start_attempt(wt, "main", f"harness-attempts/i{n}/1", assume_clean=n > 0,
                                   reuse=memo)
    sha = worktrees.commit_attempt(wt, f"item {n}", reuse=memo)
    worktrees.accept(repo, f"harness/i{n}", sha, reuse=memo)
    return base


def settle(wt: Path, memo: reuse.Reuse, repo: Path) -> None:
    """Run no-change items until a snapshot is trusted (files older than a clock tick)."""
    for n in range(100, 200):
        cycle(repo, wt, memo, n)
        if memo.clean is not None:
            return
        time.sleep(0.02)  # the next tick of the filesystem clock; bounded by the loop
    raise AssertionError("no snapshot was ever trusted")


def test_no_change_items_run_no_git_process_and_end_as_git_would(repo, wt, memo, gits):
    settle(wt, memo, repo)
    stream_pids = set()
    gits.clear()
    main = git(repo, "rev-parse", "main")
    for n in range(5):
        assert cycle(repo, wt, memo, n) == main
        stream_pids |= {s._proc.pid for s in memo._streams.values()}
    assert gits == []  # no git process per item
    assert len(stream_pids) == 2  # one accept stream, one start stream, kept across items
    assert git(wt, "symbolic-ref", "HEAD") == "refs/heads/harness-attempts/i4/1"
    assert git(wt, "status", "--porcelain") == ""
    for n in range(5):
        assert git(repo, "rev-parse", f"harness/i{n}", f"harness-attempts/i{n}/1").split() == \
            [main, main]
    log = git(wt, "reflog", "-1", "--format=%gs")
    assert log == "checkout: moving from harness-attempts/i3/1 to harness-attempts/i4/1"
    git(repo, "fsck", "--no-progress")


CHANGES = {
    "edit, same size": lambda wt: (wt / "src" / "a.txt").write_text("v2\n"),
    "new file": lambda wt: (wt / "new.txt").write_text("n\n"),
    "new empty dir then file": lambda wt: ((wt / "d").mkdir(), (wt / "d" / "f").write_text("")),
    "delete": lambda wt: (wt / "run.sh").unlink(),
    "chmod +x": lambda wt: (wt / "run.sh").chmod(0o755),
    "file to symlink": lambda wt: ((wt / "run.sh").unlink(), (wt / "run.sh").symlink_to("x")),
    "staged only": lambda wt: (subprocess.run(["git", "rm", "-q", "--cached", "run.sh"], cwd=wt,
                                              check=True)),
    "agent's own commit": lambda wt: subprocess.run(
        ["git", "commit", "-q", "--allow-empty", "-m", "mine"], cwd=wt, check=True),
    "un-ignore an ignored file": lambda wt: ((wt / ".gitignore").write_text("")),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_every_change_an_agent_makes_is_committed(repo, wt, memo, gits, change):
    (wt / "build.log").write_text("ignored\n")
    settle(wt, memo, repo)
    start = cycle(repo, wt, memo, 0)
    assert memo.clean is not None
    gits.clear()
    CHANGES[change](wt)  # at once: same clock tick as the last look, where it can be
    sha = worktrees.commit_attempt(wt, "changed", reuse=memo)
    assert "status" in gits  # the shortcut did not answer: git was asked
    if change != "staged only":  # git add -A puts the index back as the tree is: no commit
        assert sha != start
    assert git(wt, "status", "--porcelain") == ""  # git agrees: all of it was committed


def test_a_change_in_the_info_exclude_file_is_seen(repo, wt, memo):
    (wt / "notes.tmp").write_text("x\n")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("*.tmp\n")
    settle(wt, memo, repo)
    start = cycle(repo, wt, memo, 0)
    (repo / ".git" / "info" / "exclude").write_text("")
    assert worktrees.commit_attempt(wt, "changed", reuse=memo) != start
    assert "notes.tmp" in git(wt, "show", "--name-only", "--format=", "HEAD")


def test_an_entry_changed_in_the_stamps_clock_tick_gets_no_snapshot(wt):
    gitdir, common = worktrees.git_dirs(wt)
    head = git(wt, "rev-parse", "HEAD")

    def head_then_write():  # runs after the stamp is written: a change git may not see
        (wt / "src" / "a.txt").write_text("v3\n")
        return head

    assert snapshot.take(wt, gitdir, common, head_then_write) is None
    time.sleep(0.05)  # past any clock tick: the same tree is now trusted
    snap = snapshot.take(wt, gitdir, common, lambda: head)
    assert snap is not None and snap.holds(head)
    assert not snap.holds("0" * 40)


def test_nested_repository_or_too_many_entries_is_unfit(wt):
    gitdir, common = worktrees.git_dirs(wt)
    head = git(wt, "rev-parse", "HEAD")
    time.sleep(0.05)
    with pytest.raises(snapshot.Unfit, match="more than 2 entries"):
        snapshot.take(wt, gitdir, common, lambda: head, max_entries=2)
    git(wt / "src", "init", "-q")
    time.sleep(0.05)
    with pytest.raises(snapshot.Unfit, match="nested repository"):
        snapshot.take(wt, gitdir, common, lambda: head)


def test_an_unfit_tree_is_not_walked_again_for_a_while(repo, wt, memo, monkeypatch):
    takes = []
    real = snapshot.take

    def small_limit(*a, **kw):
        takes.append(1)
        return real(*a, **kw, max_entries=2)

    monkeypatch.setattr(snapshot, "take", small_limit)
    for n in range(5):
        cycle(repo, wt, memo, n)
    assert len(takes) == 1 and memo.clean is None  # found unfit once, then git alone
    assert git(wt, "status", "--porcelain") == ""


def test_a_post_checkout_hook_makes_the_switch_run_git(repo, wt, memo, tmp_path, gits):
    settle(wt, memo, repo)
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\necho ran >> {tmp_path / 'hook-ran'}\n")
    hook.chmod(0o755)
    gits.clear()
    worktrees.start_attempt(wt, "main", "harness-attempts/h/1", assume_clean=True, reuse=memo)
    assert "checkout" in gits
    assert (tmp_path / "hook-ran").read_text() == "ran\n"


def test_an_existing_branch_or_a_moved_target_takes_git_checkout(repo, wt, memo, gits):
    settle(wt, memo, repo)
    git(repo, "branch", "harness-attempts/old/1", "main")
    gits.clear()
    worktrees.start_attempt(wt, "main", "harness-attempts/old/1", assume_clean=True,
                            reuse=memo)
    assert "checkout" in gits
    settle(wt, memo, repo)
    (repo / "src" / "a.txt").write_text("main moved\n")
    git(repo, "commit", "-qam", "moved")
    gits.clear()
    base = worktrees.start_attempt(wt, "main", "harness-attempts/m/1", assume_clean=True,
                                   reuse=memo)
    assert "checkout" in gits and base == git(repo, "rev-parse", "main")
    assert (wt / "src" / "a.txt").read_text() == "main moved\n"


def test_a_held_head_lock_falls_back_to_git_and_its_error(repo, wt, memo):
    settle(wt, memo, repo)
    gitdir, _ = worktrees.git_dirs(wt)
    (gitdir / "HEAD.lock").write_text("")
    with pytest.raises(worktrees.GitError) as err:
        worktrees.start_attempt(wt, "main", "harness-attempts/l/1", assume_clean=True,
                                reuse=memo)
    assert "HEAD.lock" in str(err.value.stderr if hasattr(err.value, "stderr") else err.value)
    assert (gitdir / "HEAD.lock").exists()  # not ours: left alone


def test_stream_rejects_a_stale_compare_and_swap_then_works_again(repo):
    main = git(repo, "rev-parse", "main")
    s = RefStream(repo, "parallel-harness: test")
    try:
        s.update("refs/heads/x", main, None)
        first = s._proc.pid
        with pytest.raises(RefRejected) as err:
            s.update("refs/heads/x", main, "1" * 40)  # not what x is
        assert "refs/heads/x" in str(err.value) and err.value.stderr
        assert s._proc is None
        s.update("refs/heads/y", main, None)
        assert s._proc.pid != first
        assert git(repo, "rev-parse", "x", "y").split() == [main, main]
    finally:
        s.close()
    assert s._proc is None


def test_accept_survives_its_stream_being_killed(repo, wt, memo):
    main = git(repo, "rev-parse", "main")
    worktrees.accept(repo, "harness/k", main, reuse=memo)
    (proc,) = [s._proc for s in memo._streams.values()]
    proc.kill()  # our own child, by its pid
    proc.wait()
    git(repo, "branch", "-f", "side", "main")
    assert worktrees.accept(repo, "harness/k2", main, reuse=memo) is None
    assert git(repo, "rev-parse", "harness/k2") == main


def test_a_stream_older_than_a_lock_does_not_keep_it_alive(repo, monkeypatch):
    import psutil

    real_iter = psutil.process_iter
    ours: set[int] = set()  # the rule is judged on these processes only, not the machine's
    monkeypatch.setattr(locks.psutil, "process_iter",
                        lambda attrs: [p for p in real_iter(attrs) if p.pid in ours])
    s = RefStream(repo, "parallel-harness: test")
    try:
        s.update("refs/heads/z", git(repo, "rev-parse", "main"), None)
        ours.add(s._proc.pid)
        lock = repo / ".git" / "refs" / "heads" / "stuck.lock"
        lock.write_text("")
        later = time.time() + refstream.HOLD_MAX + 5  # as if the stream had run long since
        monkeypatch.setattr(locks.time, "time", lambda: later)
        made = later - refstream.HOLD_MAX - 3  # after the stream started, before its window
        os.utime(lock, (made, made))
        assert locks.is_stale(lock)  # made after the stream's last possible transaction
        plain = subprocess.Popen(["git", "cat-file", "--batch"], cwd=repo,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ours.add(plain.pid)
        try:
            assert not locks.is_stale(lock)  # a plain git running since before it may own it
        finally:
            plain.stdin.close()
            plain.wait(timeout=10)
    finally:
        s.close()


def _pool_git_calls(tmp_path: Path, monkeypatch, path: str, reuse_on: bool,
                    items: int) -> dict[str, int]:
    """Run ``items`` no-change items through a real coordinator and worker with a git shim
    on PATH; return how many git processes of each subcommand ran."""
    import shutil

    from harness.queue.core import Queue
    from tests.wsutil import events, make_workspace, start_coordinator

    real = shutil.which("git")
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir(parents=True)
    log = tmp_path / "git-calls"
    (shim_dir / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    (shim_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}:{path}")
    ws = make_workspace(tmp_path / "ws", f"[git]\nreuse = {'true' if reuse_on else 'false'}\n")
    q = Queue(ws.queue_dir)
    for i in range(items):
        q.enqueue({"id": f"n{i:02d}", "command": ["true"]})
    log.write_text("")
    coord = start_coordinator(ws, "--agents", "1")
    try:
        assert coord.wait(timeout=120) == 0
    finally:
        if coord.poll() is None:
            os.killpg(coord.pid, 9)  # the session it was started in, recorded by Popen
            coord.wait()
    ends = [e for e in events(ws) if e["event"] == "attempt-end"]
    assert sorted(e["item"] for e in ends if e.get("reason") == "succeeded") == \
        [f"n{i:02d}" for i in range(items)]
    main = git(ws.root, "rev-parse", "main")
    for i in range(items):
        assert git(ws.root, "rev-parse", f"harness/n{i:02d}") == main
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        args = line.split()
        while args and args[0] in ("-c", "-C"):
            args = args[2:]
        sub = " ".join(args[:1] + (["--stdin"] if "--stdin" in args else []))
        counts[sub] = counts.get(sub, 0) + 1
    return counts


def test_the_pool_runs_no_git_per_no_change_item_unless_reuse_is_off(tmp_path, monkeypatch):
    items = 12
    path = os.environ["PATH"]
    on = _pool_git_calls(tmp_path / "on", monkeypatch, path, True, items)
    off = _pool_git_calls(tmp_path / "off", monkeypatch, path, False, items)
    assert off.get("status", 0) >= items and off.get("checkout", 0) >= items
    assert off.get("update-ref", 0) >= items and "update-ref --stdin" not in off
    assert on.get("status", 0) + on.get("checkout", 0) + on.get("update-ref", 0) <= 6, on
    assert on.get("update-ref --stdin", 0) == 2, on  # one worker: its two streams, all along


def test_a_stream_that_cannot_start_is_a_rejection_and_accept_says_why(repo, tmp_path, memo):
    s = RefStream(tmp_path / "gone", "parallel-harness: test")
    with pytest.raises(RefRejected, match="cannot start"):
        s.update("refs/heads/x", "1" * 40, None)
    with pytest.raises(worktrees.GitError):  # the process path then gives git's own error
        worktrees.accept(repo, "harness/x", "1" * 40, reuse=memo)


def test_a_worker_killed_between_branch_and_head_loses_nothing(tmp_path, monkeypatch):
    """Failpoint reuse.branch-created: each worker is SIGKILLed on its first switch in place,
    after git made the branch and before HEAD names it. The item is retried as the next
    attempt, every item ends done, the killed attempt's branch is at the target, and no
    git lock and no git process is left behind."""
    import psutil

    from harness.queue import names
    from harness.queue.core import Queue
    from harness.queue.invariants import check
    from tests.wsutil import events, make_workspace, start_coordinator

    ws = make_workspace(tmp_path / "ws", max_attempts=5)
    ids = [f"k{i}" for i in range(4)]
    for i in ids:
        Queue(ws.queue_dir).enqueue({"id": i, "command": ["true"]})
    monkeypatch.setenv("HARNESS_FAILPOINTS", "reuse.branch-created=kill")
    coord = start_coordinator(ws, "--agents", "1")
    try:
        assert coord.wait(timeout=120) == 0, (ws.root / "coordinator.out").read_text()
    finally:
        if coord.poll() is None:
            os.killpg(coord.pid, 9)  # the session it was started in, recorded by Popen
            coord.wait()
    generations = {e["generation"] for e in events(ws) if e["event"] == "worker-start"}
    assert len(generations) >= 2, "the failpoint never fired"
    assert check(ws.queue_dir, enqueued=ids, expect_finished=True) == []
    done = [names.parse(e) for e in names.entries(ws.queue_dir / "done")]
    assert sorted(n.id for n in done) == ids
    retried = [n for n in done if n.attempt > 1]  # a killed attempt: taken over by the next
    assert retried
    main = git(ws.root, "rev-parse", "main")
    for n in retried:  # the killed attempt's branch was made; HEAD never named it
        assert git(ws.root, "rev-parse", f"harness-attempts/{n.id}/{n.attempt - 1}") == main
    assert all(git(ws.root, "rev-parse", f"harness/{i}") == main for i in ids)
    assert [p for p in (ws.root / ".git").rglob("*.lock")
            if p.name != worktrees.LOCK_NAME] == []  # git's; ours is a flock, always there
    git(ws.root, "fsck", "--no-progress")
    left = [p.pid for p in psutil.process_iter(["cwd"])
            if str(p.info.get("cwd") or "").startswith(str(tmp_path))]
    assert left == []
