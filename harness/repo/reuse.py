"""One worker's memory of its worktree between attempts, so that an attempt that changed
nothing costs no git process.

Items that change no file (test shards, checks, lint that finds nothing) are
where the harness's own cost shows. For them, each attempt used to run
``git status`` (did the agent change anything?), ``git checkout -b`` (the next
attempt's branch) and ``git update-ref`` (record the result). With a
:class:`Reuse`:

- *status* — the last ``git status`` that found the tree clean left a
  :class:`~harness.repo.snapshot.Snapshot`; while it holds (every ``lstat``
  and HEAD as they were), the tree is still clean, and :func:`still_clean`
  says so without git.
- *checkout* — when the tree is clean and HEAD is already at the target,
  ``git checkout -b branch target`` would change no file and no index entry:
  it creates the branch and points HEAD at it. :func:`switch_in_place` does
  exactly that: the branch through git (:class:`~harness.repo.refstream.RefStream`),
  HEAD by git's own lock-and-rename protocol, with the reflog line git writes.
  Not when a ``post-checkout`` hook exists (git would run it), and not for a
  branch that exists already (git decides about its commits).
- *update-ref* — through a long-lived ``git update-ref --stdin`` too (one per
  reflog message: this one's, and ``accept``'s).

Every shortcut falls back to the git process on any doubt, and the caller gets
what git's commands give: the same branch, HEAD, refs and reflogs. Two
differences: ``branch.autoSetupMerge=always`` sets no upstream on a branch
started this way, and the branch's reflog line says "parallel-harness: start
attempt" where git's says "branch: Created from ...".
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

from harness.queue import failpoints
from harness.repo import gitfiles
from harness.repo.gitenv import IDENTITY, git_env
from harness.repo.refstream import RefRejected, RefStream
from harness.repo.snapshot import Snapshot

START_MESSAGE = "parallel-harness: start attempt"
_fp_branch_created = failpoints.define(
    "reuse.branch-created", "the attempt's branch exists (ref stream); HEAD does not name it yet")


class Reuse:
    """What one worker knows of its worktree between git calls: the snapshot of the last
    state git verified clean (None: ask git), and its ref-update streams.

    One per worker, used by one thread; :meth:`close` ends the streams' processes.
    """

    UNFIT_RETRY = 100  # statuses without a snapshot after a tree was found unfit for one

    def __init__(self) -> None:
        self.clean: Snapshot | None = None
        self._streams: dict[tuple[str, str], RefStream] = {}
        self._hook: tuple[Snapshot, bool] | None = None  # (for which snapshot, hook exists)
        self._skip = 0  # snapshots not to try (a big tree would be walked for nothing)

    def found_unfit(self) -> None:
        self._skip = self.UNFIT_RETRY

    def unfit(self) -> bool:
        """True while the last tree found unfit is not to be tried again (counts down)."""
        if self._skip:
            self._skip -= 1
            return True
        return False

    def stream(self, cwd: Path, message: str) -> RefStream:
        key = (str(cwd), message)
        if key not in self._streams:
            self._streams[key] = RefStream(Path(cwd), message)
        return self._streams[key]

    def close(self) -> None:
        for s in self._streams.values():
            s.close()
        self._streams.clear()

    def has_post_checkout_hook(self, wt: Path, snap: Snapshot) -> bool:
        """Asked of git once per snapshot (``core.hooksPath`` lives in the config files the
        snapshot watches); True when git cannot say, so that the caller runs git."""
        if self._hook is None or self._hook[0] is not snap:
            try:
                proc = subprocess.run(["git", "rev-parse", "--git-path", "hooks/post-checkout"],
                                      cwd=wt, env=git_env(), capture_output=True, text=True)
            except OSError:
                return True  # git's own run will say what is wrong
            path = gitfiles.path_in(Path(wt), proc.stdout.strip())
            self._hook = (snap, proc.returncode != 0 or os.path.lexists(path))
        return self._hook[1]


def still_clean(reuse: Reuse, wt: Path) -> str | None:
    """HEAD's sha if nothing changed since git last found the tree clean; else None (and
    the snapshot is dropped: ask git)."""
    return _still_clean_at(reuse, gitfiles.gitdir_of(Path(wt)))


def _still_clean_at(reuse: Reuse, gitdir: Path | None) -> str | None:
    snap = reuse.clean
    if snap is None:
        return None
    head = gitfiles.head_in_files(gitdir) if gitdir is not None else None
    if snap.holds(head):
        return head
    reuse.clean = None
    return None


def switch_in_place(reuse: Reuse, wt: Path, target: str, branch: str) -> str | None:
    """Start ``branch`` at ``target`` as ``git checkout -b`` would when the clean tree is
    already at ``target``; return the sha, or None (nothing done that git will not
    redo) when that is not so or anything fails."""
    wt = Path(wt)
    gitdir = gitfiles.gitdir_of(wt)
    head = _still_clean_at(reuse, gitdir)
    if head is None or gitdir is None or reuse.clean is None:
        return None
    common = gitfiles.common_of_gitdir(gitdir)
    sha = target if gitfiles.SHA.fullmatch(target) else gitfiles.ref_in_files(
        common, f"refs/heads/{target}")
    if sha != head or gitfiles.ref_in_files(common, f"refs/heads/{branch}") is not None:
        return None  # elsewhere, unknown, or the branch exists: git's checkout decides
    if reuse.has_post_checkout_hook(wt, reuse.clean):
        return None
    try:
        reuse.stream(wt, START_MESSAGE).create(f"refs/heads/{branch}", sha)
    except RefRejected:
        return None
    # The branch first, HEAD after: git updating a branch that HEAD names would also log
    # to HEAD and take HEAD.lock. Failing here (HEAD.lock held): the caller's git checkout
    # -b finds the branch and takes it over with -B. Crashing here: the branch stays at the
    # target with no commit of its own; the retry is a new attempt on a branch of its own.
    _fp_branch_created()
    return sha if _point_head(gitdir, branch, sha) else None


def _point_head(gitdir: Path, branch: str, sha: str) -> bool:
    """HEAD = ``ref: refs/heads/<branch>``, the way git writes it: create ``HEAD.lock``
    exclusively (a git running here holds it), append the reflog line while holding
    it, rename it over HEAD. False, with the lock gone, if any step fails."""
    head, lock = gitdir / "HEAD", gitdir / "HEAD.lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        try:
            st = os.lstat(head)
            if not stat.S_ISREG(st.st_mode):  # a symlinked HEAD (core.preferSymlinkRefs)
                raise OSError(f"{head} is not a regular file")  # is git's to write
            old = gitfiles.read(head) or ""
            os.fchmod(fd, st.st_mode & 0o777)
            os.write(fd, f"ref: refs/heads/{branch}\n".encode())
        finally:
            os.close(fd)
        _log_head(gitdir, sha, old, branch)
        os.rename(lock, head)
    except OSError:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        return False
    return True


def _log_head(gitdir: Path, sha: str, old_head: str, branch: str) -> None:
    """Append git's checkout line to ``logs/HEAD`` if there is one (as git does when the
    log exists; git creates it at ``worktree add``)."""
    old = old_head[len("ref: refs/heads/"):] if old_head.startswith("ref: refs/heads/") \
        else old_head
    offset = time.localtime().tm_gmtoff // 60
    tz = f"{'+' if offset >= 0 else '-'}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
    who = f"{IDENTITY['GIT_COMMITTER_NAME']} <{IDENTITY['GIT_COMMITTER_EMAIL']}>"
    line = f"{sha} {sha} {who} {int(time.time())} {tz}\tcheckout: moving from {old} to {branch}\n"
    try:
        fd = os.open(gitdir / "logs" / "HEAD", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
