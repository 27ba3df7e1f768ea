"""The integration mode ``[git] integrate`` asks for, built with what only the pool has:
``verify`` run in a worktree of its own, a pull request's description from the item.

``merge-push`` verifies each real merge (not a fast-forward of what the worker
verified) in ``worktrees/integration``, detached at the merge commit; the
worker slots ``w<N>`` are never used for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from harness.agents import runner
from harness.config import Config
from harness.paths import check_inside
from harness.queue.core import Queue
from harness.repo import worktrees
from harness.repo.integration import LocalMerge, Mode
from harness.repo.publish import MergePush, PullRequest, Push
from harness.repo.remote import Remote
from harness.workspace import Workspace

INTEGRATION_WORKTREE = "integration"


def build(ws: Workspace, cfg: Config, queue: Queue, repo: Path,
          event: Callable[..., None]) -> Mode | None:
    """The mode for ``cfg.git.integrate`` (None for "none")."""
    git = cfg.git
    if git.integrate == "none":
        return None
    if git.integrate == "merge":
        return LocalMerge(repo, git.target_branch, event)
    remote = Remote(repo, git.remote)
    push = Push(repo, remote, git.push_prefix, event)
    if git.integrate == "push":
        return push
    if git.integrate == "pr":
        return PullRequest(repo, remote, git.push_prefix, event, git.pr_command,
                           describe=lambda item_id: _describe(ws, queue, item_id),
                           opened=lambda item_id: _result(ws, queue, item_id).get("pr_url")
                           is not None)
    verify = (lambda sha: _verify_merge(ws, cfg, repo, sha)) if git.verify else None
    return MergePush(repo, remote, git.target_branch, push, event, verify=verify,
                     retries=git.push_retries)


def _result(ws: Workspace, queue: Queue, item_id: str) -> dict:
    name = queue.find(item_id, ("done", "failed"))
    if name is None:
        return {}
    try:
        return orjson.loads((ws.attempt_dir(item_id, name.attempt) / "result.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def _describe(ws: Workspace, queue: Queue, item_id: str) -> tuple[str, Path]:
    """(title, a file with the pull request's body) for a done item."""
    name = queue.find(item_id, ("done",))
    item = queue.read("done", name) if name is not None else None
    title = (item.title if item else "") or item_id
    d = ws.attempt_dir(item_id, name.attempt if name else 1)
    body = d / "pr-summary.md"
    body.write_text(f"{title}\n\n{(item.prompt or '') if item else ''}\n\nMade by"
                    f" parallel-harness: item `{item_id}`, attempt {name.attempt if name else '?'}"
                    f" ({_result(ws, queue, item_id).get('detail', '')}).\n")
    return title, body


def _verify_merge(ws: Workspace, cfg: Config, repo: Path, sha: str) -> str | None:
    """Run ``[git] verify`` on commit ``sha`` in the integration worktree; why it failed."""
    path = ws.worktree(INTEGRATION_WORKTREE)
    wt = worktrees.ensure_worktree(repo, path, sha, within=ws.root)
    worktrees.run_git(wt, ["checkout", "--force", "--detach", "-q", sha], "check out the merge")
    worktrees.run_git(wt, ["clean", "-fdqx"], "clean the integration worktree")
    check_inside(ws.root, wt)
    verify = cfg.git.verify
    argv = list(verify) if isinstance(verify, list) else ["/bin/sh", "-c", verify]
    log = ws.logs_dir / "integration-verify.log"
    try:
        outcome = runner.run(argv, cwd=wt, env=runner.clean_env({}), stdout=log, stderr=log,
                             limits=runner.Limits(timeout=cfg.git.verify_timeout), poll=0.2,
                             on_start=lambda proc: None, on_poll=lambda: None)
    except runner.SpawnError as exc:
        return str(exc)
    if outcome.exit_code == 0:
        return None
    how = "timed out" if outcome.timed_out else f"exit {outcome.exit_code}"
    return f"verify {how}; see {log}"
