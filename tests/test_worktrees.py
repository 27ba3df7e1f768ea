"""harness.repo.worktrees against real git repositories: creation, reuse, attempts, no lost work.

Concurrency note (measured with git 2.39.5 on the 2-core dev machine): eight
*unlocked* ``git worktree add`` processes released by a barrier, adding paths
that share a basename (``slots/<i>/wt``), failed 7 times in 80 adds with
"fatal: failed to read .git/worktrees/wt/commondir: Success" — the race that
research/fsqueue.md §3.3 cites. Through ``ensure_worktree`` (the repo-wide lock)
the same workload never fails; ``test_concurrent_creation`` checks it.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.repo import gitfiles, worktrees
from harness.repo.worktrees import GitError, UnsavedWork

pytestmark = pytest.mark.timeout(60)

IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


def git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


def new_repo(tmp_path: Path, monkeypatch) -> Path:
    """An empty repository on main at ``tmp_path/repo``, with a test identity set."""
    for k, v in IDENTITY.items():
        monkeypatch.setenv(k, v)
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    return r


@pytest.fixture
def repo(tmp_path, monkeypatch):
    r = new_repo(tmp_path, monkeypatch)
    (r / "README.md").write_text("hello\n")
    (r / ".gitignore").write_text("*.log\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    (r / "src.txt").write_text("v1\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "second")
    return r


def registered(repo: Path) -> list[Path]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [Path(line.split(" ", 1)[1]) for line in out.splitlines()
            if line.startswith("worktree ")]


def branches(repo: Path, pattern: str = "refs/heads/") -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", pattern)
    return dict(line.split(" ") for line in out.splitlines())


def assert_healthy(repo: Path) -> None:
    git(repo, "fsck", "--no-progress")
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""


# -- creation and reuse --------------------------------------------------------------------


def test_ensure_creates_once_then_reuses_without_running_git(repo, tmp_path, monkeypatch):
    path = tmp_path / "worktrees" / "w1"
    wt = worktrees.ensure_worktree(repo, path, "main")
    assert wt == path and (wt / "src.txt").read_text() == "v1\n"
    assert path.resolve() in [p.resolve() for p in registered(repo)]
    assert git(wt, "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
    assert git(wt, "symbolic-ref", "-q", "HEAD", check=False) == ""  # detached

    def no_git(*a, **k):
        raise AssertionError(f"fast path ran a process: {a}")
    monkeypatch.setattr(worktrees.subprocess, "run", no_git)
    assert worktrees.ensure_worktree(repo, path, "main") == path
    monkeypatch.undo()
    assert len(registered(repo)) == 2
    assert (repo / ".git" / worktrees.LOCK_NAME).exists()  # the lock lives in the common dir
    assert_healthy(repo)


def test_ensure_replaces_leftover_without_work_and_refuses_one_with_files(repo, tmp_path):
    empty = tmp_path / "wt" / "empty"
    empty.mkdir(parents=True)
    only_gitfile = tmp_path / "wt" / "gitfile"
    only_gitfile.mkdir()
    (only_gitfile / ".git").write_text(f"gitdir: {repo}/.git/worktrees/gone\n")
    for path in (empty, only_gitfile):
        worktrees.ensure_worktree(repo, path, "main")
        assert (path / "README.md").exists()
    work = tmp_path / "wt" / "work"
    work.mkdir()
    (work / "notes.txt").write_text("precious\n")
    with pytest.raises(UnsavedWork) as exc:
        worktrees.ensure_worktree(repo, work, "main")
    assert exc.value.path == work
    assert (work / "notes.txt").read_text() == "precious\n"
    with pytest.raises(GitError):  # a repository of its own is never taken over
        worktrees.ensure_worktree(repo, repo, "main")
    assert_healthy(repo)


def test_ensure_recovers_from_an_add_killed_midway(repo, tmp_path):
    path = tmp_path / "worktrees" / "w1"
    worktrees.ensure_worktree(repo, path, "main")
    admin = Path(git(path, "rev-parse", "--absolute-git-dir"))
    # What SIGKILL during `git worktree add` leaves: the admin dir still marked
    # "initializing" and a partial checkout.
    (admin / "locked").write_text("initializing")
    (path / "src.txt").unlink()
    (path / "README.md").write_text("half written")
    assert worktrees.ensure_worktree(repo, path, "main") == path
    assert git(path, "status", "--porcelain") == ""
    assert (path / "src.txt").read_text() == "v1\n"
    assert not any((p / "locked").exists() for p in (repo / ".git" / "worktrees").iterdir())
    # Directory deleted by hand while still registered: add succeeds after prune.
    other = tmp_path / "worktrees" / "w2"
    worktrees.ensure_worktree(repo, other, "main")
    subprocess.run(["rm", "-rf", str(other)], check=True)
    assert worktrees.ensure_worktree(repo, other, "main") == other
    assert len(registered(repo)) == 3
    assert_healthy(repo)


def test_pruning_a_deleted_worktree_rescues_its_detached_commits(repo, tmp_path):
    gone = tmp_path / "worktrees" / "gone"
    worktrees.ensure_worktree(repo, gone, "main")
    (gone / "lost.txt").write_text("only here\n")
    git(gone, "add", "-A")
    git(gone, "commit", "-q", "-m", "detached work")
    sha = git(gone, "rev-parse", "HEAD")
    subprocess.run(["rm", "-rf", str(gone)], check=True)
    worktrees.ensure_worktree(repo, tmp_path / "worktrees" / "w1", "main")  # prunes `gone`
    assert f"{worktrees.RESCUE_PREFIX}gone-{sha[:12]}" in branches(repo)
    assert len(registered(repo)) == 2


# -- attempts ------------------------------------------------------------------------------


@pytest.fixture
def wt(repo, tmp_path):
    return worktrees.ensure_worktree(repo, tmp_path / "worktrees" / "w1", "main")


def test_start_attempt_puts_a_fresh_branch_at_target(repo, wt):
    main = git(repo, "rev-parse", "main")
    assert worktrees.start_attempt(wt, "main", "harness-attempts/a/1") == main
    assert git(wt, "symbolic-ref", "--short", "HEAD") == "harness-attempts/a/1"
    (wt / "src.txt").write_text("attempt 1\n")
    first = worktrees.commit_attempt(wt, "attempt 1")
    assert first != main
    assert worktrees.start_attempt(wt, "main", "harness-attempts/a/2") == main
    assert (wt / "src.txt").read_text() == "v1\n"
    assert git(wt, "status", "--porcelain", "--ignored") == ""
    assert branches(repo)["harness-attempts/a/1"] == first  # previous attempt kept
    assert "rescue" not in " ".join(branches(repo))  # nothing needed rescuing


def test_uncommitted_and_untracked_work_is_committed_not_lost(repo, wt):
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    (wt / "src.txt").write_text("edited\n")                    # modified
    (wt / "README.md").unlink()                                # deleted
    (wt / "new" / "deep").mkdir(parents=True)
    (wt / "new" / "deep" / "file.txt").write_text("new\n")     # untracked, in a new dir
    (wt / "staged.txt").write_text("staged\n")
    git(wt, "add", "staged.txt")                               # staged
    (wt / "build.log").write_text("ignored\n")                 # ignored: not work
    assert worktrees.has_unsaved_work(wt)
    worktrees.start_attempt(wt, "main", "harness-attempts/a/2", clean_ignored=True)
    saved = "harness-attempts/a/1"
    assert git(repo, "log", "-1", "--format=%s%n%an", saved).splitlines() == [
        worktrees.SAVE_MESSAGE, "parallel-harness"]
    assert git(repo, "show", f"{saved}:src.txt") == "edited"
    assert git(repo, "show", f"{saved}:new/deep/file.txt") == "new"
    assert git(repo, "show", f"{saved}:staged.txt") == "staged"
    assert git(repo, "ls-tree", "--name-only", saved, "README.md") == ""
    assert git(wt, "status", "--porcelain", "--ignored") == ""  # fresh and clean, ignored gone
    assert not worktrees.has_unsaved_work(wt)


def test_dirty_detached_head_is_saved_on_a_rescue_branch(repo, wt):
    (wt / "src.txt").write_text("edited while detached\n")
    head = git(wt, "rev-parse", "HEAD")
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    rescue = f"{worktrees.RESCUE_PREFIX}w1-{head[:12]}"
    assert git(repo, "show", f"{rescue}:src.txt") == "edited while detached"
    assert git(repo, "rev-parse", f"{rescue}~1") == head
    assert git(repo, "rev-parse", "main") == head  # target untouched


def test_detached_unreachable_commits_get_a_rescue_branch(repo, wt):
    (wt / "x.txt").write_text("x\n")
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "commit on a detached HEAD")
    orphan = git(wt, "rev-parse", "HEAD")
    assert worktrees.has_unsaved_work(wt)
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    assert branches(repo)[f"{worktrees.RESCUE_PREFIX}w1-{orphan[:12]}"] == orphan
    assert not worktrees.has_unsaved_work(wt)


def test_restarting_an_attempt_branch_rescues_its_commits(repo, wt):
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    (wt / "y.txt").write_text("y\n")
    done = worktrees.commit_attempt(wt, "attempt 1")
    worktrees.start_attempt(wt, "main", "harness-attempts/a/2")
    # The same branch name again (e.g. a restarted worker): its commit must survive the reset.
    assert worktrees.start_attempt(wt, "main", "harness-attempts/a/1") == git(repo, "rev-parse",
                                                                              "main")
    assert done in branches(repo, "refs/heads/harness-rescue/").values()


def test_start_attempt_reports_git_errors(repo, wt):
    with pytest.raises(GitError) as exc:
        worktrees.start_attempt(wt, "no-such-branch", "harness-attempts/a/1")
    assert "no-such-branch" in " ".join(exc.value.cmd) and exc.value.stderr
    assert "no-such-branch" in str(exc.value) and str(wt) in str(exc.value)
    with pytest.raises(GitError):
        worktrees.start_attempt(wt.parent / "missing", "main", "harness-attempts/a/1")


def test_commit_attempt_commits_only_changes_and_needs_no_identity(repo, wt, tmp_path,
                                                                   monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for k in IDENTITY:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("EMAIL", "")
    start = worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    assert worktrees.commit_attempt(wt, "nothing") == start
    (wt / "z.txt").write_text("z\n")
    sha = worktrees.commit_attempt(wt, "harness: a attempt 1\n\nWrite z")
    assert sha != start and sha == git(wt, "rev-parse", "HEAD")
    assert git(wt, "log", "-1", "--format=%an <%ae>|%cn|%s") == \
        "parallel-harness <parallel-harness@localhost>|parallel-harness|harness: a attempt 1"
    assert worktrees.commit_attempt(wt, "again") == sha


def test_accept_points_the_item_branch_at_the_attempt(repo, wt):
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    (wt / "z.txt").write_text("z\n")
    sha = worktrees.commit_attempt(wt, "attempt")
    worktrees.accept(repo, "harness/a", sha)
    assert branches(repo)["harness/a"] == sha
    for bad in ("0" * 40, "1" * 40, "main"):  # null (would delete), missing object, not a sha
        with pytest.raises(GitError):
            worktrees.accept(repo, "harness/a", bad)
    assert branches(repo)["harness/a"] == sha


def test_accept_reads_the_previous_value_from_the_ref_files_loose_or_packed(repo, wt):
    """accept's compare-and-swap value comes from the files (a git process less per item);
    packed refs, absent refs and a wrong reading all end with the branch right."""
    common = worktrees.common_dir(repo)
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    (wt / "a.txt").write_text("a\n")
    first = worktrees.commit_attempt(wt, "one")
    assert gitfiles.ref_in_files(common, "refs/heads/harness/a") is None
    assert worktrees.accept(repo, "harness/a", first) is None
    assert gitfiles.ref_in_files(common, "refs/heads/harness/a") == first
    git(repo, "pack-refs", "--all")
    assert not (common / "refs/heads/harness/a").exists()
    assert gitfiles.ref_in_files(common, "refs/heads/harness/a") == first
    assert gitfiles.ref_in_files(common, "refs/heads/harness/b") is None
    (wt / "b.txt").write_text("b\n")
    second = worktrees.commit_attempt(wt, "two")
    assert worktrees.accept(repo, "harness/a", second) == first
    assert branches(repo)["harness/a"] == second


def test_a_wrong_reading_of_the_ref_files_fails_only_the_swap_then_git_is_asked(
        repo, wt, monkeypatch):
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    (wt / "a.txt").write_text("a\n")
    first = worktrees.commit_attempt(wt, "one")
    worktrees.accept(repo, "harness/a", first)
    (wt / "b.txt").write_text("b\n")
    second = worktrees.commit_attempt(wt, "two")
    monkeypatch.setattr(gitfiles, "ref_in_files", lambda common, ref: None)  # stale
    assert worktrees.accept(repo, "harness/a", second) == first
    assert branches(repo)["harness/a"] == second


# -- removal and stale locks -----------------------------------------------------------------


def test_remove_refuses_unsaved_work_then_removes(repo, wt):
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    (wt / "wip.txt").write_text("wip\n")
    with pytest.raises(UnsavedWork):
        worktrees.remove_worktree(repo, wt)
    assert (wt / "wip.txt").exists()
    worktrees.commit_attempt(wt, "wip")
    git(wt, "checkout", "-q", "--detach")
    (wt / "more.txt").write_text("more\n")
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "detached")
    with pytest.raises(UnsavedWork, match="detached"):
        worktrees.remove_worktree(repo, wt)
    assert wt.exists() and len(registered(repo)) == 2
    worktrees.start_attempt(wt, "main", "harness-attempts/a/2")  # rescues the detached commit
    worktrees.remove_worktree(repo, wt)
    assert not wt.exists() and len(registered(repo)) == 1
    worktrees.remove_worktree(repo, wt)  # idempotent
    assert_healthy(repo)


def test_stale_index_lock_is_removed_only_when_owner_is_dead(repo, wt):
    lock = Path(git(wt, "rev-parse", "--absolute-git-dir")) / "index.lock"
    lock.write_text("")
    with pytest.raises(GitError, match="index.lock"):
        worktrees.start_attempt(wt, "main", "harness-attempts/a/1")
    assert worktrees.remove_stale_index_lock(wt, owner_dead=False) is False
    assert lock.exists()
    assert worktrees.remove_stale_index_lock(wt, owner_dead=True) is True
    assert not lock.exists()
    assert worktrees.remove_stale_index_lock(wt, owner_dead=True) is False
    assert worktrees.remove_stale_index_lock(wt.parent / "never-created", owner_dead=True) is False
    worktrees.start_attempt(wt, "main", "harness-attempts/a/1")


def test_git_error_survives_pickling():
    import pickle
    err = UnsavedWork("boom", cmd=["git", "x"], path="/p", stderr="fatal", returncode=1)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is UnsavedWork and str(back) == str(err) and back.stderr == "fatal"


# -- concurrency -----------------------------------------------------------------------------


def _worker(repo, path, index, barrier, results):
    try:
        barrier.wait(timeout=20)
        wt = worktrees.ensure_worktree(repo, path, "main")
        worktrees.start_attempt(wt, "main", f"harness-attempts/item{index}/1")
        (wt / f"from-{index}.txt").write_text(f"{os.getpid()}\n")
        sha = worktrees.commit_attempt(wt, f"worker {index}")
        admin = (wt / ".git").read_text().split(":", 1)[1].strip()
        results.put((index, "ok", str(wt), admin, sha))
    except BaseException as exc:  # report, never hang the parent
        results.put((index, "error", f"{type(exc).__name__}: {exc}", "", ""))


def _run_workers(repo, paths):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(len(paths)), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(repo, p, i, barrier, results))
             for i, p in enumerate(paths)]
    for p in procs:
        p.start()
    out = sorted(results.get(timeout=40) for _ in procs)
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    return out


@pytest.mark.parametrize("layout", ["distinct-names", "same-basename"])
def test_concurrent_creation(repo, tmp_path, layout):
    # same-basename is the layout that breaks unlocked `git worktree add` (see module doc).
    paths = [tmp_path / "worktrees" / f"w{i}" if layout == "distinct-names"
             else tmp_path / "slots" / str(i) / "wt" for i in range(8)]
    out = _run_workers(repo, paths)
    assert [r[1] for r in out] == ["ok"] * 8, out
    assert {Path(r[2]) for r in out} == set(paths)   # each worker got its own worktree...
    assert len({r[3] for r in out}) == 8             # ...with its own git admin dir
    assert len({r[4] for r in out}) == 8             # ...and its own commit
    expected = {repo.resolve(), *(p.resolve() for p in paths)}
    assert {p.resolve() for p in registered(repo)} == expected
    assert_healthy(repo)
    heads = branches(repo, "refs/heads/harness-attempts/")
    for index, _, wt, _, sha in out:
        assert heads[f"harness-attempts/item{index}/1"] == sha
        assert git(repo, "ls-tree", "--name-only", sha).split() == [
            ".gitignore", "README.md", f"from-{index}.txt", "src.txt"]  # nobody else's file


def _ensure_same(repo, path, barrier, results):
    try:
        barrier.wait(timeout=20)
        results.put(str(worktrees.ensure_worktree(repo, path, "main")))
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_ensure_of_one_path_creates_it_once(repo, tmp_path):
    path = tmp_path / "worktrees" / "shared"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_ensure_same, args=(repo, path, barrier, results))
             for _ in range(8)]
    for p in procs:
        p.start()
    out = [results.get(timeout=40) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    assert out == [str(path)] * 8
    assert len(registered(repo)) == 2
    assert_healthy(repo)


def _ensure_and_report(repo, path, done):
    worktrees.ensure_worktree(repo, path, "main")
    done.put(time.monotonic())


def test_worktree_add_waits_for_the_repo_wide_lock(repo, tmp_path):
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    lock = worktrees.worktree_lock(repo)
    with lock:
        proc = ctx.Process(target=_ensure_and_report,
                           args=(repo, tmp_path / "worktrees" / "w1", done))
        proc.start()
        time.sleep(0.5)
        assert done.empty() and not (tmp_path / "worktrees" / "w1").exists()
        released = time.monotonic()
    assert done.get(timeout=20) >= released
    proc.join(timeout=10)
    assert proc.exitcode == 0 and len(registered(repo)) == 2
