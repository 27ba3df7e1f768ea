"""A git remote as the harness uses it: fetch the target, push with a lease, confirm.

Credentials are git's business (credential helpers, ssh agents); nothing here
reads or stores one, and every message that leaves this module goes through
:func:`redact`, so a URL with ``user:password@`` is never logged.

Local refs the harness keeps per remote (never a branch anyone checks out):

- ``refs/harness-remote/<remote>/<branch>``: a remote branch as last fetched;
- ``refs/harness-pushed/<remote>/<branch>``: the commit the harness last pushed
  to that branch, which pins the next push's ``--force-with-lease``: a push
  never rewrites a commit the harness did not write.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import filelock

from harness.paths import user_umask
from harness.queue import failpoints
from harness.repo.gitenv import git_env

GIT_TIMEOUT: Final = 120.0
Failure = Literal["unreachable", "auth", "rejected", "moved"]

_fp_after_fetch = failpoints.define("fetch.after", "the remote's branch fetched; nothing merged")
_fp_before_push = failpoints.define("push.before", "integration computed; nothing pushed yet")
_fp_after_push = failpoints.define(
    "push.after", "the remote has the commit; the local lease and refs not yet updated")

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@", re.I)
_UNREACHABLE = re.compile(
    r"could not resolve host|connection refused|connection timed out|unable to connect|"
    r"network is unreachable|no route to host|could not read from remote repository|"
    r"does not appear to be a git repository|unable to access|the remote end hung up|"
    r"failed to connect|no such file or directory|repository .* not found", re.I)
_AUTH = re.compile(r"authentication failed|permission denied|invalid username or password|"
                   r"http basic: access denied|returned error: 40[13]", re.I)
_MOVED = re.compile(r"stale info|fetch first|non-fast-forward|\(rejected\)|"
                    r"cannot lock ref|failed to update ref", re.I)


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class RemoteError(Exception):
    """A remote operation failed; ``failure`` says how, ``message`` is git's own (redacted)."""

    def __init__(self, what: str, failure: Failure, stderr: str) -> None:
        self.failure, self.message = failure, redact(stderr.strip())
        super().__init__(f"{what}: {failure}: {self.message or 'no message from git'}")

    @property
    def reason(self) -> str:
        """The item's terminal reason for it: ``remote_unreachable`` or ``push_rejected``."""
        return "remote_unreachable" if self.failure == "unreachable" else "push_rejected"


def classify(stderr: str, *, pushing: bool) -> Failure:
    """What a failed fetch or push means, from git's message."""
    if _UNREACHABLE.search(stderr):
        return "unreachable"
    if _AUTH.search(stderr) and "hook" not in stderr:
        return "auth"
    if pushing and _MOVED.search(stderr) and "hook declined" not in stderr:
        return "moved"
    return "rejected"


@dataclass(frozen=True)
class Remote:
    """``name`` is a configured remote ("origin") or a URL; ``repo`` the local repository."""

    repo: Path
    name: str

    @property
    def key(self) -> str:
        """A ref-safe name for the remote: itself when it is a plain name, else a digest."""
        if re.fullmatch(r"[A-Za-z0-9._-]+", self.name) and ".." not in self.name:
            return self.name
        return "url-" + hashlib.sha1(self.name.encode()).hexdigest()[:12]

    def tracking_ref(self, branch: str) -> str:
        return f"refs/harness-remote/{self.key}/{branch}"

    def pushed_ref(self, branch: str) -> str:
        return f"refs/harness-pushed/{self.key}/{branch}"

    def _git(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True,
                                  text=True, errors="replace", timeout=GIT_TIMEOUT,
                                  env=git_env(), umask=user_umask(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 124, "", f"timed out after"
                                               f" {GIT_TIMEOUT:.0f}s: could not read from"
                                               " remote repository")

    def local(self, ref: str) -> str | None:
        """The commit a local ref points at, or None."""
        proc = self._git("rev-parse", "--verify", "-q", ref)
        return proc.stdout.strip() or None

    def fetch(self, branch: str) -> str | None:
        """Fetch ``branch`` into :meth:`tracking_ref`; its commit, or None if the remote
        has no such branch. Raises RemoteError (unreachable, auth, rejected).

        Fetches into one repository are serialised (a lock in its git dir): two
        at once would race on the tracking ref ("cannot lock ref").
        """
        with _fetch_lock(self.repo):
            return self._fetch(branch)

    def _fetch(self, branch: str) -> str | None:
        for _ in range(2):  # a fetch by someone else (a person's) may hold the ref a moment
            proc = self._git("fetch", "--quiet", "--no-tags", self.name,
                             f"+refs/heads/{branch}:{self.tracking_ref(branch)}")
            if proc.returncode == 0 or "cannot lock ref" not in proc.stderr:
                break
        _fp_after_fetch()
        if proc.returncode != 0:
            if "couldn't find remote ref" in proc.stderr:
                self._git("update-ref", "-d", self.tracking_ref(branch))
                return None
            raise RemoteError(f"fetch {branch} from {redact(self.name)}",
                              classify(proc.stderr, pushing=False), proc.stderr)
        return self.local(self.tracking_ref(branch))

    def remote_sha(self, branch: str) -> str | None:
        """The commit the remote's ``branch`` points at now (``git ls-remote``), or None."""
        proc = self._git("ls-remote", "--heads", self.name, f"refs/heads/{branch}")
        if proc.returncode != 0:
            raise RemoteError(f"ls-remote {redact(self.name)}",
                              classify(proc.stderr, pushing=False), proc.stderr)
        for line in proc.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}":
                return sha
        return None

    def push(self, sha: str, branch: str, expect: str | None) -> None:
        """Set the remote's ``branch`` to ``sha`` if it is ``expect`` now (None: absent).

        One ``git push --force-with-lease=<branch>:<expect>``: a compare-and-swap on the
        remote. Already at ``sha`` (a push repeated after a crash) counts as done.
        Afterwards ``git ls-remote`` must show ``sha``. Raises RemoteError ("moved" when
        the branch is not at ``expect``).
        """
        ref = f"refs/heads/{branch}"
        _fp_before_push()
        # No "+" on the refspec: it would force the update past the lease (git 2.39).
        proc = self._git("push", "--quiet", "--porcelain",
                         f"--force-with-lease={ref}:{expect or ''}", self.name, f"{sha}:{ref}")
        _fp_after_push()
        if proc.returncode != 0:
            failure = classify(proc.stderr + proc.stdout, pushing=True)
            if failure == "moved" and self.remote_sha(branch) == sha:
                failure = None  # already there: an earlier push of ours landed
            if failure is not None:
                raise RemoteError(f"push {branch} to {redact(self.name)}", failure,
                                  proc.stderr + proc.stdout)
        seen = self.remote_sha(branch)
        if seen != sha:
            raise RemoteError(f"push {branch} to {redact(self.name)}", "moved",
                              f"the remote has {seen or 'no branch'} after the push, not {sha}")
        self._git("update-ref", self.pushed_ref(branch), sha)

    def last_pushed(self, branch: str) -> str | None:
        """The commit the harness last pushed to ``branch`` (its lease), if any."""
        return self.local(self.pushed_ref(branch))


FETCH_LOCK: Final = "harness-fetch.lock"  # in the common git dir: one fetch at a time
FETCH_STAMP: Final = "harness-fetch.stamp"


def fresh_base(remote: Remote, branch: str, max_age: float) -> tuple[str | None, str]:
    """(commit, note): the remote's ``branch`` fetched at most ``max_age`` seconds ago.

    Every worker on this repository shares one fetch: under one lock in the git dir,
    a fetch happens only when the last one is older than ``max_age``. If the remote
    cannot be reached the last fetched commit is used and ``note`` says so; None when
    there is none (the caller starts from its local branch).
    """
    git_dir = _git_dir(remote.repo)
    note = ""
    with _fetch_lock(remote.repo):
        stamp = git_dir / FETCH_STAMP
        try:
            age = time.time() - os.stat(stamp).st_mtime
        except FileNotFoundError:
            age = float("inf")
        if not 0 <= age < max_age:
            try:
                remote._fetch(branch)
                stamp.touch()
            except RemoteError as exc:
                note = f"started from the last fetched {branch}: {exc}"
    return remote.local(remote.tracking_ref(branch)), note


def _git_dir(repo: Path) -> Path:
    from harness.repo.worktrees import common_dir

    return common_dir(repo)


_locks: dict[Path, filelock.FileLock] = {}


def _fetch_lock(repo: Path) -> filelock.FileLock:
    """The one lock per repository that every fetch of the harness takes (one instance per
    process: a second flock on the same file from this process would wait for itself)."""
    path = _git_dir(repo) / FETCH_LOCK
    if path not in _locks:
        _locks[path] = filelock.FileLock(str(path), timeout=GIT_TIMEOUT)
    return _locks[path]
