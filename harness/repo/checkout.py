"""Keep a checkout of the target branch in step with the merges that move it.

``integrate = "merge"`` with ``repo = "."`` moves ``main`` while the
operator's own checkout has ``main`` checked out: the ref moves, the files
and the index do not, so ``git status`` there shows every merged change
reversed. After each merge the merge queue calls :func:`follow`, which
brings such a checkout from the old tip to the new one, but only when it is
clean at the old tip (index == the old tip's tree, no unstaged change to a
tracked file). ``git read-tree -m -u OLD NEW`` is a two-tree merge: it
refuses rather than overwrite an untracked file or an edit made meanwhile.
Anything else is left alone and reported, with the command that catches up.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.paths import user_umask
from harness.repo.gitenv import git_env
from harness.repo.merge import worktrees_on

GIT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Followed:
    """One checkout of the target: ``updated`` to the new tip, or left ``behind`` (why)."""

    path: Path
    updated: bool
    why: str = ""


def _git(wt: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(wt), *args], capture_output=True, text=True,
                          timeout=GIT_TIMEOUT, env=git_env({"GIT_OPTIONAL_LOCKS": "0"}),
                          umask=user_umask())


def follow(repo: Path, target: str, old: str, new: str) -> list[Followed]:
    """Fast-forward every clean checkout of ``target`` from ``old`` to ``new``.

    Never raises for a checkout it cannot update (that is reported in ``why``);
    raises harness.repo.merge.MergeError only if the worktrees cannot be listed.
    """
    out = []
    for wt in worktrees_on(repo, f"refs/heads/{target}"):
        if wt.is_dir():
            out.append(_follow_one(wt, old, new))
    return out


def _follow_one(wt: Path, old: str, new: str) -> Followed:
    catch_up = f"git -C {shlex.quote(str(wt))} read-tree -m -u {old[:12]} {new[:12]}"
    try:
        status = _git(wt, "status", "--porcelain=v1", "--untracked-files=no", "--no-renames")
        if status.returncode != 0:
            return Followed(wt, False, f"git status failed: {status.stderr.strip()}")
        if any(line[1:2] not in (" ", "") for line in status.stdout.splitlines()):
            return Followed(wt, False, f"it has unstaged changes; when ready: {catch_up}")
        if _git(wt, "diff-index", "--cached", "--quiet", old).returncode != 0:
            return Followed(wt, False, f"its index is not the old tip; when ready: {catch_up}")
        moved = _git(wt, "read-tree", "-m", "-u", old, new)
        if moved.returncode != 0:
            return Followed(wt, False, f"{moved.stderr.strip()}; when ready: {catch_up}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Followed(wt, False, f"{exc}; when ready: {catch_up}")
    return Followed(wt, True)

