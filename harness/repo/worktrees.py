"""Git plumbing for the workers' worktrees: create once, reset per attempt, never lose work.

Each worker owns one linked worktree (``worktrees/<worker>/``) that it reuses
for every item: a new attempt is a branch switch plus a clean (a few ms), not a
``git worktree add`` (a lot more). This module knows nothing of the queue or of
agents; the worker calls:

    ensure_worktree(repo, path, target)      once per attempt; free when it exists
    start_attempt(wt, target, branch)        fresh branch at target, clean tree
    commit_attempt(wt, message)              git add -A + commit, returns HEAD sha
    accept(repo, item_branch, sha)           refs/heads/<item_branch> = sha
    remove_stale_index_lock(wt, owner_dead)  only with proof that the owner is dead
    remove_worktree(repo, path)              refuses unsaved work
    has_unsaved_work(wt)

Rules (research/fsqueue.md §3.3):

- ``git worktree add/remove/prune`` are serialised by one repo-wide lock,
  ``<git-common-dir>/harness-worktrees.lock`` (:func:`worktree_lock`).
  Concurrent ``worktree add`` is not safe in git: with two paths of the same
  basename it fails with "failed to read .git/worktrees/wt/commondir: Success"
  (reproduced here with git 2.39: 7 failures in 80 unlocked adds).
- Work is never destroyed. Before a worktree is reset, uncommitted changes and
  untracked files are committed (onto the current ``harness`` branch, else onto
  a new ``harness-rescue/...`` branch), and a detached HEAD whose commits no
  branch contains gets a rescue branch. Removal refuses (:class:`UnsavedWork`)
  instead of rescuing, so an operator sees it. Files that ``.gitignore`` matches
  are not work: they are not saved, and ``start_attempt(clean_ignored=True)``
  deletes them.
- git's own ``index.lock`` is never broken unless the caller proves the owner
  is dead.

The hot path reads git's administrative files directly where that is exact
(is this directory a registered worktree? which sha is HEAD now?,
:mod:`harness.repo.gitfiles`). Without a :class:`~harness.repo.reuse.Reuse`, an
item runs three git processes (status, checkout, update-ref) when the tree is
already clean, four on the first attempt after creation (plus a reachability
check of the detached HEAD); with one, an item that changes nothing runs none
(see :mod:`harness.repo.reuse`). ``bench/overhead.py`` and
``bench/worktree_cost.py`` measure it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import filelock

from harness.paths import UnsafePath, check_inside, user_umask
from harness.repo import gitfiles, locks, snapshot
from harness.repo import reuse as reuse_mod
from harness.repo.refstream import RefRejected
from harness.repo.gitenv import git_env

LOCK_NAME = "harness-worktrees.lock"
LOCK_TIMEOUT = 600.0  # seconds; a worktree add of a large repo can take a while
SAVE_MESSAGE = "harness: save uncommitted work before next attempt"
ACCEPT_MESSAGE = "parallel-harness: accept"
RESCUE_PREFIX = "harness-rescue/"
# Branches the harness owns: uncommitted work found on them is committed onto them.
HARNESS_BRANCH_PREFIXES = ("harness/", "harness-")

_UNSAFE_REF_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class GitError(Exception):
    """A git operation failed; carries the command, the path it ran in and git's stderr."""

    def __init__(self, message: str, *, cmd: Sequence[str] = (), path: Path | str | None = None,
                 stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cmd = list(cmd)
        self.path = Path(path) if path is not None else None
        self.stderr = stderr
        self.returncode = returncode

    def __str__(self) -> str:
        parts = [self.message]
        if self.cmd:
            parts.append(f"command: {' '.join(self.cmd)}")
        if self.path is not None:
            parts.append(f"in: {self.path}")
        if self.returncode is not None:
            parts.append(f"exit status: {self.returncode}")
        if self.stderr.strip():
            parts.append(f"stderr: {self.stderr.strip()}")
        return "; ".join(parts)

    def __reduce__(self):  # keep the fields when pickled across processes
        return (functools.partial(type(self), self.message, cmd=self.cmd, path=self.path,
                                  stderr=self.stderr, returncode=self.returncode), ())


class UnsavedWork(GitError):
    """The operation would destroy uncommitted changes, untracked files or unreachable commits."""


# -- running git ---------------------------------------------------------------


def _git(args: Sequence[str], cwd: Path, *, check: bool = True, what: str | None = None,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["git", *args]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=git_env(), capture_output=True, input=input,
                              encoding="utf-8", errors="surrogateescape", umask=user_umask())
    except OSError as exc:  # cwd vanished, git not installed
        raise GitError(f"{what or 'git'}: {exc}", cmd=cmd, path=cwd) from exc
    if check and proc.returncode != 0:
        raise GitError(f"{what or 'git ' + args[0]} failed", cmd=cmd, path=cwd,
                       stderr=proc.stderr, returncode=proc.returncode)
    return proc


def run_git(repo: Path, args: Sequence[str], what: str,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run git in ``repo`` with the harness's environment; GitError (with git's message)
    if it fails."""
    return _git(args, Path(repo), what=what, input=input)


def _git_wt(args: Sequence[str], wt: Path, **kw) -> subprocess.CompletedProcess[str]:
    """Run git inside a worktree, never in a repository further up the tree."""
    if not os.path.lexists(wt / ".git"):
        raise GitError("not a git worktree (no .git)", cmd=["git", *args], path=wt)
    return _git(args, wt, **kw)


# -- reading git's administrative files -------------------------------------------------


def common_dir(repo: Path) -> Path:
    """The repository's common git dir, resolved (where refs and locks live)."""
    return _common_dir(Path(repo))


def git_dirs(wt: Path) -> tuple[Path, Path]:
    """(the worktree's own git dir, the common git dir), resolved, read from the files
    git keeps (no git process). GitError if ``wt`` is no worktree."""
    gitdir = gitfiles.gitdir_of(Path(wt))
    if gitdir is None or not (gitdir / "HEAD").is_file():
        raise GitError("not a git worktree (no .git pointing at a git dir)", path=Path(wt))
    return gitdir.resolve(), gitfiles.common_of_gitdir(gitdir).resolve()


def _common_dir(repo: Path) -> Path:
    """The repository's common git dir (``.git`` of the main worktree, or a bare repo)."""
    repo = Path(repo)
    gitdir = gitfiles.gitdir_of(repo)
    if gitdir is None and (repo / "HEAD").is_file() and (repo / "objects").is_dir():
        gitdir = repo  # bare repository
    if gitdir is not None and (gitdir / "HEAD").is_file():
        return gitfiles.common_of_gitdir(gitdir).resolve()
    proc = _git(["rev-parse", "--git-common-dir"], repo, what="find the repository")
    return gitfiles.path_in(repo, proc.stdout.strip()).resolve()


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _initializing(admin: Path) -> bool:
    """``git worktree add`` writes ``locked`` = "initializing" first and removes it last."""
    return gitfiles.read(admin / "locked") == "initializing"


@dataclass(frozen=True)
class _Slot:
    state: str  # absent | ok | initializing | unregistered | foreign | symlink
    admin: Path | None = None


def _classify(path: Path, common: Path) -> _Slot:
    if not os.path.lexists(path):
        return _Slot("absent")
    if os.path.islink(path):
        return _Slot("symlink")  # never followed: it may lead to any checkout
    if not path.is_dir() or (path / ".git").is_dir():
        return _Slot("foreign")  # a file, or a repository of its own
    gitdir = gitfiles.gitdir_of(path)
    if gitdir is None:
        return _Slot("unregistered")
    if not _same(gitdir.parent, common / "worktrees"):
        # Points into another repository: not ours to touch if that one knows it.
        back = gitfiles.read(gitdir / "gitdir")
        if back and _same(gitfiles.path_in(gitdir, back), path / ".git"):
            return _Slot("foreign", gitdir)
        return _Slot("unregistered")
    back = gitfiles.read(gitdir / "gitdir")
    if not back or not _same(gitfiles.path_in(gitdir, back), path / ".git") \
            or not (gitdir / "HEAD").is_file():
        return _Slot("unregistered")
    return _Slot("initializing" if _initializing(gitdir) else "ok", gitdir)


def _admins(common: Path) -> list[Path]:
    try:
        return [e for e in (common / "worktrees").iterdir() if e.is_dir()]
    except OSError:
        return []


def _holds_files(path: Path) -> bool:
    """True unless the directory is empty or holds nothing but a ``.git`` file."""
    try:
        return any(e.name != ".git" or e.is_dir() for e in os.scandir(path))
    except NotADirectoryError:
        return True
    except FileNotFoundError:
        return False


def _head_sha(wt: Path) -> str:
    """HEAD's sha, from the files a ref update just wrote (no process); git as a fallback."""
    gitdir = gitfiles.gitdir_of(wt)
    sha = gitfiles.head_in_files(gitdir) if gitdir is not None else None
    return sha or _git_wt(["rev-parse", "--verify", "HEAD^{commit}"], wt).stdout.strip()


# -- status -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Status:
    oid: str | None    # None on an unborn branch
    branch: str | None  # None when detached
    dirty: bool         # changes to tracked files, or untracked (not ignored) files


def _status(wt: Path, *, optional_locks: bool = True) -> _Status:
    args = ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal"]
    if not optional_locks:
        args.insert(0, "--no-optional-locks")
    out = _git_wt(args, wt, what="git status").stdout
    oid = branch = None
    dirty = False
    for rec in out.split("\0"):
        if rec.startswith("# branch.oid "):
            oid = rec[len("# branch.oid "):]
        elif rec.startswith("# branch.head "):
            branch = rec[len("# branch.head "):]
        elif rec and not rec.startswith("# "):
            dirty = True
            break
    return _Status(None if oid == "(initial)" else oid,
                   None if branch == "(detached)" else branch, dirty)


def _reachable(cwd: Path, sha: str) -> bool:
    """Whether some branch contains the commit."""
    out = _git(["for-each-ref", "--count=1", "--contains", sha, "--format=%(refname)",
                "refs/heads/"], cwd, what="check reachability").stdout
    return bool(out.strip())


def _rescue_name(label: str, sha: str) -> str:
    label = _UNSAFE_REF_CHARS.sub("-", label).strip(".-") or "worktree"
    return f"{RESCUE_PREFIX}{label}-{sha[:12]}"


def _create_rescue_ref(cwd: Path, label: str, sha: str) -> str:
    """Create a new branch ``harness-rescue/<label>-<sha>[-N]`` at sha; return its name."""
    base = _rescue_name(label, sha)
    for n in range(1, 100):
        name = base if n == 1 else f"{base}-{n}"
        # An empty old value makes this create-only: it fails if the branch exists.
        proc = _git(["update-ref", "-m", "parallel-harness: rescue", f"refs/heads/{name}", sha, ""],
                    cwd, check=False)
        if proc.returncode == 0:
            return name
        exists = _git(["rev-parse", "--verify", "-q", f"refs/heads/{name}"], cwd, check=False)
        if exists.returncode != 0:
            raise GitError("could not create rescue branch", cmd=["git", "update-ref", name, sha],
                           path=cwd, stderr=proc.stderr, returncode=proc.returncode)
    raise GitError(f"too many rescue branches named {base}", path=cwd)


def _commit(wt: Path, message: str) -> bool:
    """``git add -A`` and commit; False when there was nothing to commit."""
    _git_wt(["add", "-A"], wt, what="git add")
    proc = _git_wt(["-c", "commit.gpgSign=false", "commit", "-q", "--no-verify", "-m", message],
                   wt, check=False)
    if proc.returncode == 0:
        return True
    if _git_wt(["diff", "--cached", "--quiet"], wt, check=False).returncode == 0:
        return False  # e.g. only a dirty submodule: nothing to record here
    raise GitError("git commit failed", cmd=["git", "commit", "-m", message], path=wt,
                   stderr=proc.stderr, returncode=proc.returncode)


def _is_harness_branch(branch: str | None) -> bool:
    return branch is not None and branch.startswith(HARNESS_BRANCH_PREFIXES)


# -- the worktree lock, creation and removal ----------------------------------------------


def worktree_lock(repo: Path, timeout: float = LOCK_TIMEOUT) -> filelock.FileLock:
    """The repo-wide lock every ``git worktree add/remove/prune`` of the harness goes through."""
    return filelock.FileLock(str(_common_dir(Path(repo)) / LOCK_NAME), timeout=timeout)


class _Locked:
    def __init__(self, repo: Path) -> None:
        self.lock = worktree_lock(repo)
        self.repo = repo

    def __enter__(self) -> None:
        try:
            self.lock.acquire()
        except filelock.Timeout as exc:
            raise GitError(f"timed out after {self.lock.timeout}s waiting for the worktree lock "
                           f"{self.lock.lock_file}", path=self.repo) from exc

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _discard_crashed_add(path: Path, common: Path) -> None:
    """Remove what a ``git worktree add`` of ``path`` left when it was killed mid-way.

    Caller holds the worktree lock, so no add of ours is running: an admin dir
    still marked "initializing" for this path is from a dead add, and its files
    are git's partial checkout, never handed out to anyone.
    """
    for admin in _admins(common):
        back = gitfiles.read(admin / "gitdir")
        if not back or not _initializing(admin):
            continue
        if os.path.realpath(gitfiles.path_in(admin, back)) != os.path.realpath(path / ".git"):
            continue
        gitdir = gitfiles.gitdir_of(path) if path.is_dir() and not path.is_symlink() else None
        if gitdir is not None and _same(gitdir, admin):
            shutil.rmtree(path)
        shutil.rmtree(admin, ignore_errors=True)


def _prune(repo: Path, common: Path) -> None:
    """``git worktree prune``, after giving unreachable detached HEADs of the pruned a branch."""
    for admin in _admins(common):
        back = gitfiles.read(admin / "gitdir")
        if (back and os.path.exists(gitfiles.path_in(admin, back))) or (admin / "locked").exists():
            continue  # alive, or locked (also: an add in progress): prune keeps it
        head = gitfiles.read(admin / "HEAD")
        if head and gitfiles.SHA.fullmatch(head) and not _reachable(repo, head):
            _create_rescue_ref(repo, admin.name, head)
    _git(["worktree", "prune"], repo, what="git worktree prune")


def branch_head(repo: Path, branch: str) -> str | None:
    """The commit ``refs/heads/<branch>`` points at; None if there is no such branch
    (or it has no commit yet: an unborn branch in a fresh ``git init``)."""
    proc = _git(["rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}"], repo,
                check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def current_branch(repo: Path) -> str | None:
    """The branch HEAD is on (also when unborn); None when detached or not a repository."""
    proc = _git(["symbolic-ref", "-q", "--short", "HEAD"], repo, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def list_branches(repo: Path, prefixes: Sequence[str]) -> list[str]:
    """Local branch names under ``prefixes`` (e.g. "harness/"); GitError if git fails."""
    proc = _git(["for-each-ref", "--format=%(refname:short)",
                 *(f"refs/heads/{p}" for p in prefixes)], Path(repo), what="list branches")
    return proc.stdout.split()


def branches(repo: Path) -> list[str]:
    """Local branch names, harness/ and harness-attempts/ ones left out."""
    proc = _git(["for-each-ref", "--format=%(refname:short)", "refs/heads/"], repo, check=False)
    return [b for b in proc.stdout.split() if not _is_harness_branch(b)]


def _checked(path: Path, within: Path | None) -> Path:
    """``path`` made absolute; with ``within``, refused (UnsafePath) unless it lies inside
    it through no symlink (harness.paths.check_inside)."""
    path = Path(os.path.abspath(path))
    if within is not None:
        check_inside(within, path)
    elif os.path.islink(path):
        raise UnsafePath(path, f"a symbolic link (to {os.readlink(path)!r})")
    return path


def ensure_worktree(repo: Path, path: Path, target: str, *, within: Path | None = None) -> Path:
    """Return ``path`` as a registered worktree of ``repo``, creating it (detached at target).

    Reuse costs no git process. A directory left by a crash is replaced when it
    holds no work (empty, or only a ``.git`` file, or an add killed mid-way);
    otherwise :class:`UnsavedWork` is raised. A symlink at ``path`` (or, with
    ``within``, anywhere from ``within`` down) raises :class:`UnsafePath` and is
    left alone.
    """
    repo, path = Path(repo), _checked(path, within)
    common = _common_dir(repo)
    if _classify(path, common).state == "ok":
        return path
    with _Locked(repo):
        _discard_crashed_add(path, common)
        slot = _classify(path, common)
        if slot.state == "ok":
            return path
        if slot.state == "symlink":
            raise UnsafePath(path, "became a symbolic link")
        if slot.state == "foreign":
            raise GitError("path exists and is not a worktree of this repository", path=path)
        if slot.state == "unregistered":
            if _holds_files(path):
                raise UnsavedWork("directory exists, is not a registered worktree and holds files;"
                                  " not replacing it", path=path)
            shutil.rmtree(path)
        _prune(repo, common)
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(["worktree", "add", "--detach", str(path), target], repo, what="git worktree add")
    return path


def remove_worktree(repo: Path, path: Path, *, within: Path | None = None) -> None:
    """Remove a worktree (``--force``) and prune; refuse with UnsavedWork if it holds work.

    A symlink is never removed nor followed (UnsafePath), checked again under the
    worktree lock right before git runs.
    """
    repo, path = Path(repo), _checked(path, within)
    common = _common_dir(repo)
    with _Locked(repo):
        _discard_crashed_add(path, common)
        _checked(path, within)
        slot = _classify(path, common)
        if slot.state == "foreign":
            raise GitError("path is not a worktree of this repository", path=path)
        if slot.state == "unregistered":
            if _holds_files(path):
                raise UnsavedWork("directory is not a registered worktree and holds files",
                                  path=path)
            shutil.rmtree(path)
        elif slot.state == "ok":
            st = _status(path, optional_locks=False)
            if st.dirty:
                raise UnsavedWork("worktree has uncommitted changes or untracked files",
                                  path=path)
            if st.branch is None and st.oid and not _reachable(path, st.oid):
                raise UnsavedWork(f"worktree HEAD {st.oid[:12]} is detached with commits that "
                                  "no branch contains", path=path)
            _git(["worktree", "remove", "--force", str(path)], repo, what="git worktree remove")
        _prune(repo, common)


# -- attempts -----------------------------------------------------------------------------


def has_unsaved_work(wt: Path) -> bool:
    """Uncommitted changes, untracked (not ignored) files, or a detached HEAD no branch contains.

    A directory that is not a worktree counts as unsaved work if it holds any file.
    """
    wt = Path(wt)
    if not os.path.lexists(wt):
        return False
    gitdir = gitfiles.gitdir_of(wt)
    if gitdir is None or not (gitdir / "HEAD").is_file():
        return _holds_files(wt)  # not (or no longer) a worktree: any file may be work
    st = _status(wt, optional_locks=False)
    if st.dirty:
        return True
    return st.branch is None and st.oid is not None and not _reachable(wt, st.oid)


def save_work(wt: Path) -> str | None:
    """Put everything in the worktree on a branch; return the rescue branch made, if any.

    Dirty work is committed onto the current branch when it is a harness branch,
    else onto a new rescue branch started at HEAD. A clean detached HEAD that no
    branch contains gets a rescue branch.
    """
    wt = Path(wt)
    return _save(wt, _status(wt))


def _save(wt: Path, st: _Status) -> str | None:
    rescue = None
    if st.dirty:
        if not _is_harness_branch(st.branch):
            if st.oid is None:
                raise UnsavedWork("uncommitted work on an unborn branch", path=wt)
            rescue = _create_rescue_ref(wt, wt.name, st.oid)
            _git_wt(["symbolic-ref", "HEAD", f"refs/heads/{rescue}"], wt)
        _commit(wt, SAVE_MESSAGE)
    elif st.branch is None and st.oid is not None and not _reachable(wt, st.oid):
        rescue = _create_rescue_ref(wt, wt.name, st.oid)
    return rescue


def start_attempt(wt: Path, target: str, branch: str, *, clean_ignored: bool = False,
                  assume_clean: bool = False, reuse: reuse_mod.Reuse | None = None) -> str:
    """Check out a fresh ``branch`` at ``target`` in the worktree, clean; return the start sha.

    Everything in the worktree is saved first (see :func:`save_work`). If
    ``branch`` already exists with commits that ``target`` lacks, they get a
    rescue branch before the branch is moved. ``assume_clean`` skips that
    check: only for a caller that has itself just committed everything here
    (:func:`commit_attempt`) and has held the worktree since. With ``reuse``, a tree that
    nothing changed since git found it clean, already at ``target``, is switched to the
    new branch without a git process (:func:`harness.repo.reuse.switch_in_place`).
    """
    wt = Path(wt)
    if reuse is not None and not clean_ignored:
        sha = reuse_mod.switch_in_place(reuse, wt, target, branch)
        if sha is not None:
            return sha
        reuse.clean = None  # the checkout below may change files: git says clean again first
    dirty = False
    if not assume_clean:
        st = _status(wt)
        _save(wt, st)
        dirty = st.dirty
    co = _git_wt(["checkout", "--force", "-q", "-b", branch, target], wt, check=False)
    if co.returncode != 0:
        old = _git_wt(["rev-parse", "--verify", "-q", f"refs/heads/{branch}"], wt, check=False)
        if old.returncode != 0:  # the branch does not exist: a real failure (bad target, lock)
            raise GitError(f"could not start {branch} at {target}", path=wt, stderr=co.stderr,
                           cmd=["git", "checkout", "--force", "-b", branch, target],
                           returncode=co.returncode)
        old_sha = old.stdout.strip()
        if _git_wt(["merge-base", "--is-ancestor", old_sha, target], wt,
                   check=False).returncode != 0:
            _create_rescue_ref(wt, wt.name, old_sha)
        _git_wt(["checkout", "--force", "-q", "-B", branch, target], wt,
                what=f"start {branch} at {target}")
    if dirty or clean_ignored:  # a clean status shows no untracked files: nothing to clean
        _git_wt(["clean", "-fdq" + ("x" if clean_ignored else "")], wt, what="git clean")
    return _head_sha(wt)


def commit_attempt(wt: Path, message: str, *, reuse: reuse_mod.Reuse | None = None) -> str:
    """``git add -A`` and commit if anything changed; return HEAD's sha either way.

    With ``reuse``: a tree that nothing changed since git last found it clean needs no
    ``git status``; a clean status leaves a new snapshot in ``reuse`` for next time.
    """
    wt = Path(wt)
    if reuse is not None and (sha := reuse_mod.still_clean(reuse, wt)) is not None:
        return sha
    st = _status(wt) if reuse is None else _status_remembered(wt, reuse)
    if not st.dirty:
        if st.oid is None:
            raise GitError("nothing committed yet (unborn HEAD)", path=wt)
        return st.oid
    _commit(wt, message)
    return _head_sha(wt)


def _status_remembered(wt: Path, reuse: reuse_mod.Reuse) -> _Status:
    """``git status``, bracketed by two snapshots: when both agree, nothing changed while
    git looked, so a clean verdict holds for the tree they recorded (``reuse.clean``)."""
    reuse.clean = None
    gitdir = gitfiles.gitdir_of(wt)
    if gitdir is None or reuse.unfit():
        return _status(wt)
    common = gitfiles.common_of_gitdir(gitdir)
    head = functools.partial(gitfiles.head_in_files, gitdir)
    try:
        before = snapshot.take(wt, gitdir, common, head)
    except snapshot.Unfit:
        reuse.found_unfit()
        before = None
    st = _status(wt)
    if before is None or st.dirty or st.oid != before.head:
        return st
    try:
        after = snapshot.take(wt, gitdir, common, head)
    except snapshot.Unfit:  # it grew while git looked
        reuse.found_unfit()
        return st
    if after is not None and after.head == before.head and after.tree == before.tree:
        reuse.clean = after
    return st


def accept(repo: Path, item_branch: str, sha: str,
           on_stale_lock: Callable[[Path], None] | None = None, *,
           reuse: reuse_mod.Reuse | None = None) -> str | None:
    """Point ``refs/heads/<item_branch>`` at the accepted attempt's commit; return the
    commit it pointed at before (None if it did not exist).

    A stale ref lock (git's rule: older than every running git, see repo.locks) is
    removed, reported to ``on_stale_lock``, and the update tried once more; any other
    failure raises GitError with git's message. With ``reuse`` the update goes through
    its long-lived ``git update-ref --stdin`` first; any refusal there is retried here.
    """
    if item_branch.startswith("refs/") or not item_branch:
        raise GitError(f"expected a branch name, got {item_branch!r}", path=repo)
    if not gitfiles.SHA.fullmatch(sha) or not sha.strip("0"):  # the null sha would delete the branch
        raise GitError(f"expected a commit sha, got {sha!r}", path=repo)
    repo = Path(repo)
    ref = f"refs/heads/{item_branch}"
    read = gitfiles.ref_in_files(_common_dir(repo), ref)
    previous = _ref_value(repo, ref) if read is gitfiles.UNKNOWN else read
    if reuse is not None:
        try:
            reuse.stream(repo, ACCEPT_MESSAGE).update(ref, sha, previous)
            return previous
        except RefRejected:
            pass  # a stale lock, a wrong read: the process path below tells which
    args = ["update-ref", "-m", ACCEPT_MESSAGE, ref, sha]
    try:
        _git_unlocking(repo, [*args, previous or ""], f"update {item_branch}", on_stale_lock)
    except GitError:
        # The update is a compare-and-swap on the value read: a value read from the
        # files wrongly fails it and changes nothing. Read it the slow way and try again.
        if read is gitfiles.UNKNOWN or (actual := _ref_value(repo, ref)) == previous:
            raise
        previous = actual
        _git_unlocking(repo, [*args, previous or ""], f"update {item_branch}", on_stale_lock)
    return previous


def restore_branch(repo: Path, item_branch: str, previous: str | None, *, expect: str) -> bool:
    """Undo :func:`accept` if the branch still points at ``expect`` (compare-and-swap):
    back to ``previous``, or deleted if it had none. False if someone moved it since."""
    ref = f"refs/heads/{item_branch}"
    args = (["update-ref", "-m", "parallel-harness: undo accept", ref, previous, expect]
            if previous else ["update-ref", "-d", ref, expect])
    return _git(args, Path(repo), check=False).returncode == 0


def _ref_value(repo: Path, ref: str) -> str | None:
    proc = _git(["rev-parse", "--verify", "-q", ref], repo, check=False)
    if proc.returncode not in (0, 1):
        raise GitError(f"could not read {ref}", cmd=["git", "rev-parse", ref], path=repo,
                       stderr=proc.stderr, returncode=proc.returncode)
    return proc.stdout.strip() or None


def _git_unlocking(repo: Path, args: list[str], what: str,
                   on_stale_lock: Callable[[Path], None] | None) -> None:
    """Run git; when it fails on a lock file that is provably stale, remove it and retry once."""
    proc = _git(args, repo, check=False)
    if proc.returncode != 0:
        lock = locks.lock_in(proc.stderr)
        if lock is not None and locks.remove_if_stale(lock, _common_dir(repo)):
            if on_stale_lock is not None:
                on_stale_lock(lock)
            proc = _git(args, repo, check=False)
    if proc.returncode != 0:
        raise GitError(f"{what} failed", cmd=["git", *args], path=repo, stderr=proc.stderr,
                       returncode=proc.returncode)


def remove_stale_index_lock(wt: Path, owner_dead: bool) -> bool:
    """Remove the worktree's ``index.lock`` (and ``HEAD.lock``) left by a dead process.

    git never breaks these itself. Only a caller that has proved the owner dead
    (e.g. by holding the dead worker's slot lock) may pass ``owner_dead=True``;
    otherwise nothing is touched, nor through a symlinked worktree (it may be another
    checkout, whose git may be running). Returns whether a lock file was removed.
    """
    if not owner_dead or os.path.islink(wt):
        return False
    gitdir = gitfiles.gitdir_of(Path(wt))
    if gitdir is None:
        return False
    removed = False
    for name in ("index.lock", "HEAD.lock"):
        try:
            os.unlink(gitdir / name)
            removed = True
        except FileNotFoundError:
            pass
    return removed
