"""Which of the harness's branches an old item no longer needs, and deleting them in one go.

Two branches per item pile up (``harness/<id>`` and ``harness-attempts/<id>/<n>``
per attempt: 33,000 after a 17,000-item soak). For an item that ended long ago:

- its attempt branches go (the accepted attempt's commit is ``harness/<id>``);
- ``harness/<id>`` goes only once the target branch contains it: an unmerged
  result is the item's work and is never deleted here.

All deletions are one ``git update-ref --stdin`` transaction, each a
compare-and-swap on the commit listed, so a branch moved meanwhile is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.repo import worktrees


@dataclass(frozen=True)
class Prunable:
    branch: str
    sha: str
    why: str


def harness_branches(repo: Path) -> dict[str, str]:
    """{branch: commit} of every ``harness/`` and ``harness-attempts/`` branch."""
    proc = worktrees.run_git(repo, ["for-each-ref", "--format=%(refname:short) %(objectname)",
                                    "refs/heads/harness/", "refs/heads/harness-attempts/"],
                             "list the harness branches")
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def merged_into(repo: Path, target: str) -> set[str]:
    """The ``harness/`` branches whose every commit is in ``target``."""
    proc = worktrees.run_git(repo, ["for-each-ref", f"--merged=refs/heads/{target}",
                                    "--format=%(refname:short)", "refs/heads/harness/"],
                             f"list the branches merged into {target}")
    return set(proc.stdout.split())


def prunable(repo: Path, target: str, item_ids: Iterable[str]) -> list[Prunable]:
    """The branches of ``item_ids`` (items that ended long enough ago) that may go."""
    have = harness_branches(repo)
    merged = merged_into(repo, target)
    wanted = set(item_ids)
    out = []
    for branch, sha in sorted(have.items()):
        if branch.startswith("harness-attempts/"):
            item_id = branch.split("/")[1]
            if item_id in wanted:
                out.append(Prunable(branch, sha, "an attempt of an item that ended"))
        elif branch.removeprefix("harness/") in wanted and branch in merged:
            out.append(Prunable(branch, sha, f"merged into {target}"))
    return out


def delete(repo: Path, branches: list[Prunable]) -> None:
    """Delete ``branches`` in one transaction, each only if it still points at its commit.

    Raises GitError (nothing deleted) if any of them moved or git fails.
    """
    if not branches:
        return
    script = "".join(f"delete refs/heads/{b.branch} {b.sha}\n" for b in branches)
    worktrees.run_git(repo, ["update-ref", "--stdin"], "delete old branches",
                      input=script)

