"""Integration into a git remote: ``push``, ``merge-push`` and ``pr`` (see integration.py).

- :class:`Push` pushes ``harness/<id>`` to ``<push_prefix><id>`` on the remote, with
  ``--force-with-lease`` pinned to the commit the harness last pushed there: a
  human's commit on that branch is never overwritten (the item fails
  ``push_rejected``, git's message kept).
- :class:`MergePush` merges each item into the remote's target: fetch the tip,
  merge in the object store (harness.repo.merge, onto a local tracking ref),
  verify a real merge, push with a lease on the tip it merged onto. A target
  that moved meanwhile is fetched again and the item merged onto the new tip,
  up to ``retries`` times with jittered backoff; a conflict fails the item
  (``conflict``, the paths) and pushes its branch for a human.
- :class:`PullRequest` pushes like :class:`Push`, then runs the operator's command
  (``gh pr create …``) and records the URL it prints.

A remote that does not answer, or refuses the credentials, is an ``unreachable``
outcome: the item waits in done/ and the queue pauses the pool until it answers.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.repo import merge, worktrees
from harness.repo.integration import Outcome, follow_checkouts, git_lock_outcome, item_branch
from harness.repo.remote import Remote, RemoteError, redact

PR_TIMEOUT = 120.0
_URL = re.compile(r"https?://\S+")
Verify = Callable[[str], str | None]  # commit -> None if it passes, else why not


def _unreachable(exc: RemoteError) -> Outcome:
    return Outcome("unreachable", detail=str(exc))


class Push:
    """``integrate = "push"``: each done item's branch to the remote."""

    name = "push"

    def __init__(self, repo: Path, remote: Remote, prefix: str,
                 event: Callable[..., None]) -> None:
        self.repo, self.remote, self.prefix, self.event = repo, remote, prefix, event

    def integrated(self, item_id: str) -> bool:
        """Pushed and confirmed before (the lease ref is written only after ls-remote)."""
        sha = worktrees.branch_head(self.repo, item_branch(item_id))
        return sha is not None and self.remote.last_pushed(self.prefix + item_id) == sha

    def integrate(self, item_id: str) -> Outcome:
        sha = worktrees.branch_head(self.repo, item_branch(item_id))
        if sha is None:
            return Outcome("failed", "push_rejected", f"no branch {item_branch(item_id)} to push")
        return self.push_branch(item_id, sha)

    def push_branch(self, item_id: str, sha: str) -> Outcome:
        branch = self.prefix + item_id
        try:
            self.remote.push(sha, branch, expect=self.remote.last_pushed(branch))
        except RemoteError as exc:
            if exc.failure in ("unreachable", "auth"):
                return _unreachable(exc)
            why = (f"{branch} on the remote has commits the harness did not push (a human's?);"
                   " nothing was overwritten" if exc.failure == "moved" else "the remote refused")
            return Outcome("failed", "push_rejected", f"{why}: {exc.message}",
                           event="push-rejected", fields={"branch": branch, "error": exc.message})
        where = {"remote": redact(self.remote.name), "branch": branch, "sha": sha}
        return Outcome("integrated", event="pushed", fields=where, result={"pushed": where})


class PullRequest(Push):
    """``integrate = "pr"``: push, then open a pull request with the operator's command.

    ``command`` is an argv template; ``{{BRANCH}}``, ``{{TITLE}}``, ``{{ID}}`` and
    ``{{SUMMARY}}`` (a file with the item's title and prompt) are replaced in each
    argument, never through a shell. The last URL it prints is the result.
    """

    name = "pr"

    def __init__(self, repo: Path, remote: Remote, prefix: str, event: Callable[..., None],
                 command: Sequence[str], describe: Callable[[str], tuple[str, Path]],
                 opened: Callable[[str], bool]) -> None:
        super().__init__(repo, remote, prefix, event)
        self.command, self.describe, self.opened = list(command), describe, opened

    def integrated(self, item_id: str) -> bool:
        return super().integrated(item_id) and self.opened(item_id)

    def integrate(self, item_id: str) -> Outcome:
        pushed = super().integrate(item_id)
        if pushed.status != "integrated":
            return pushed
        title, summary = self.describe(item_id)
        values = {"BRANCH": self.prefix + item_id, "TITLE": title, "ID": item_id,
                  "SUMMARY": str(summary)}
        argv = [_fill(arg, values) for arg in self.command]
        try:
            proc = subprocess.run(argv, cwd=self.repo, capture_output=True, text=True,
                                  errors="replace", timeout=PR_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Outcome("failed", "pr_failed", f"{argv[0]}: {exc}; branch pushed",
                           result=pushed.result)
        urls = _URL.findall(proc.stdout)
        if proc.returncode != 0 or not urls:
            tail = redact((proc.stderr or proc.stdout).strip()[-500:])
            return Outcome("failed", "pr_failed", f"`{argv[0]}` exited {proc.returncode}:"
                           f" {tail or 'no URL printed'}; branch pushed", result=pushed.result)
        url = urls[-1]
        return Outcome("integrated", event="pr-opened", fields={**pushed.fields, "url": url},
                       result={**pushed.result, "pr_url": url})


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{{" + key + "}}", value)
    return arg


class MergePush:
    """``integrate = "merge-push"``: each item merged into the remote's target and pushed."""

    name = "merge-push"

    def __init__(self, repo: Path, remote: Remote, target: str, branch_pusher: Push,
                 event: Callable[..., None], verify: Verify | None = None,
                 retries: int = 5, backoff: float = 0.2) -> None:
        self.repo, self.remote, self.target, self.event = repo, remote, target, event
        self.branch_pusher, self.verify = branch_pusher, verify
        self.retries, self.backoff = retries, backoff
        self._tip: tuple[float, str | None] | None = None

    def integrated(self, item_id: str) -> bool:
        """The remote target contains the item's commit (fetched at most every 5 s, so a
        restart with many done items fetches once)."""
        if self._tip is None or time.monotonic() - self._tip[0] > 5.0:
            self._tip = (time.monotonic(), self.remote.fetch(self.target))
        return self._tip[1] is not None and merge.is_merged(
            self.repo, self.remote.tracking_ref(self.target), item_branch(item_id))

    def integrate(self, item_id: str) -> Outcome:
        races = 0
        while True:
            try:
                outcome = self._once(item_id, races)
            except RemoteError as exc:
                if exc.failure in ("unreachable", "auth"):
                    return _unreachable(exc)
                if exc.failure != "moved":
                    return Outcome("failed", "push_rejected", exc.message, event="push-rejected",
                                   fields={"branch": self.target, "error": exc.message})
                outcome = None
            if outcome is not None:
                return outcome
            races += 1
            if races > self.retries:
                self.event("push-race", item=item_id, retries=races - 1)
                return Outcome("retry", detail=f"{self.target} kept moving", fields={
                    "retries": races - 1})
            time.sleep(random.uniform(0.5, 1.5) * self.backoff * 2 ** (races - 1))

    def _once(self, item_id: str, races: int) -> Outcome | None:
        """One fetch, merge, verify, push; None if the push lost to a move of the target."""
        old = self.remote.fetch(self.target)
        tracking = self.remote.tracking_ref(self.target)
        branch = item_branch(item_id)
        if old is None:  # the remote has no target yet: the item's commit starts it
            sha = worktrees.branch_head(self.repo, branch) or ""
            self.remote.push(sha, self.target, expect=None)
            return self._landed(item_id, None, sha, True, races)
        try:
            result = merge.integrate(self.repo, tracking, branch, max_races=0,
                                     message=f"harness: merge {item_id}")
        except merge.MergeError as exc:
            locked = git_lock_outcome(self.repo, exc, self.event, item_id)
            if locked is not None:
                return Outcome("retry", detail=locked.detail)
            return Outcome("failed", "merge_failed", str(exc), event="merge-failed",
                           fields={"reason": "merge_failed", "error": str(exc)})
        if result.status == "conflict":
            return self._conflict(item_id, result.conflicts)
        if result.status == "already_merged":
            return Outcome("integrated", event="merged", fields={
                "status": "already_merged", "sha": old, "retries": races})
        new = result.target_sha
        if self.verify is not None and not result.fast_forward:
            why = self.verify(new)
            if why is not None:
                return Outcome("failed", "verify_failed", f"verify failed on the merge of"
                               f" {branch} with {self.target} at {old[:12]}: {why}",
                               event="merge-failed", fields={"reason": "verify_failed"})
        self.remote.push(new, self.target, expect=old)
        return self._landed(item_id, old, new, result.fast_forward, races)

    def _landed(self, item_id: str, old: str | None, new: str, fast_forward: bool,
                races: int) -> Outcome:
        """The remote has ``new``: the local target follows when it can fast-forward."""
        local = worktrees.branch_head(self.repo, self.target)
        if local is not None and local != new and merge.is_ancestor(self.repo, local, new):
            worktrees.run_git(self.repo, ["update-ref", f"refs/heads/{self.target}", new, local],
                              f"fast-forward {self.target}")
            follow_checkouts(self.repo, self.target, local, new, self.event)
        return Outcome("integrated", event="merged-pushed", fields={
            "sha": new, "base": old, "fast_forward": fast_forward, "retries": races,
            "remote": redact(self.remote.name)}, result={"pushed": {
                "remote": redact(self.remote.name), "branch": self.target, "sha": new}})

    def _conflict(self, item_id: str, paths: Sequence[str]) -> Outcome:
        listed = ", ".join(paths) or "(unknown paths)"
        pushed = self.branch_pusher.integrate(item_id)
        kept = (f"branch {self.branch_pusher.prefix}{item_id} pushed for a human"
                if pushed.status == "integrated" else f"branch {item_branch(item_id)} kept"
                f" locally (pushing it failed: {pushed.detail})")
        return Outcome("failed", "conflict", f"{item_branch(item_id)} conflicts with"
                       f" {self.target} on the remote in {listed}; {kept}",
                       event="merge-conflict", fields={"paths": list(paths)})
