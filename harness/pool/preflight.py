"""Checks made before a coordinator starts, so a run that cannot work is refused (exit 2)
instead of burning every item's attempts on the same error."""

from __future__ import annotations

from pathlib import Path

from harness.config import Config
from harness.workspace import Workspace


class PreflightError(Exception):
    """The workspace cannot run as configured; the message names the file and the key."""


def check(ws: Workspace, cfg: Config) -> None:
    """Raise ConfigError, PreflightError or PromptError if attempts could not start."""
    repo = (ws.root / cfg.git.repo).resolve()
    if not (repo / ".git").exists():
        raise PreflightError(f"{repo} is not a git repository ([git] repo in"
                             f" {ws.config_file}); workers need one for their worktrees")
    _check_target_branch(cfg, repo)
    _check_agent_program(cfg)
    if cfg.agent.preset != "shell":
        from harness.agents import prompts

        path = ws.root / cfg.paths.bootstrap
        prompts.check_static(prompts.load_template(path), str(path))
    if cfg.agent.resume:
        _check_resume_prompt(cfg)
    if cfg.agent.preset == "custom" and not cfg.agent.command:
        raise PreflightError(f"{ws.config_file}: agent.command: preset 'custom' needs an"
                             " argv template")
    _check_remote(cfg)
    if cfg.run.multi_host:
        _check_multi_host(ws, cfg)


def _check_multi_host(ws: Workspace, cfg: Config) -> None:
    """Several hosts need a filesystem whose rename and flock hold across them, and a host
    id each."""
    from harness.liveness.hosts import HostIdError, host_id
    from harness.queue.mounts import mount_of, multi_host_problem

    try:
        host_id()
    except HostIdError as exc:
        raise PreflightError(str(exc)) from None
    if cfg.run.trust_filesystem:
        return
    for path in (ws.queue_dir, ws.state_dir):
        problem = multi_host_problem(mount_of(path if path.exists() else ws.root))
        if problem:
            raise cfg.error("run.multi_host", problem)


def _check_remote(cfg: Config) -> None:
    """The remote modes need a remote, and ``pr`` its command."""
    git = cfg.git
    if git.integrate in ("push", "merge-push", "pr") and not git.remote.strip():
        raise cfg.error("git.remote", f"integrate = {git.integrate!r} delivers to a git remote:"
                        " set remote (a remote name such as \"origin\", or a URL)")
    if git.integrate == "pr" and not git.pr_command:
        raise cfg.error("git.pr_command", "integrate = \"pr\" runs this command after the push,"
                        " e.g. [\"gh\", \"pr\", \"create\", \"--head\", \"{{BRANCH}}\","
                        " \"--title\", \"{{TITLE}}\", \"--body-file\", \"{{SUMMARY}}\"]")


def _check_resume_prompt(cfg: Config) -> None:
    """A misspelt variable in [agent] resume_prompt would fail every resumed attempt."""
    from harness.agents import prompts

    unknown = sorted(v for v in prompts.variables_in(cfg.agent.resume_prompt)
                     if v not in prompts.BUILTIN | {"REASON"} and not v.startswith("meta."))
    if unknown:
        known = ", ".join(["REASON", *sorted(prompts.BUILTIN)])
        raise cfg.error("agent.resume_prompt", "unknown variable(s) " + ", ".join(
            "{{%s}}" % v for v in unknown) + f"; known: {known} and meta.KEY")


def _check_target_branch(cfg: Config, repo: Path) -> None:
    """Without a commit on the target branch every attempt fails in `git worktree add`
    until the circuit breaker trips."""
    from harness.repo import worktrees

    target = cfg.git.target_branch
    if worktrees.branch_head(repo, target) is not None:
        return
    have = worktrees.branches(repo)
    hint = (f"its branches: {', '.join(have)}" if have else
            "it has no commit yet: make one first")
    raise cfg.error("git.target_branch", f"no branch {target!r} with a commit in {repo} ({hint});"
                    " every attempt starts from this branch")


def _check_agent_program(cfg: Config) -> None:
    """Without the agent's program every attempt fails to spawn."""
    from harness.agents import presets

    name = presets.program(cfg.agent)
    if name is None or presets.find_program(cfg.agent) is not None:
        return
    key = "agent.command" if cfg.agent.preset == "custom" else "agent.preset"
    raise cfg.error(key, f"agent program {name!r} not found on PATH or not executable;"
                    " install it, or try the harness with preset = \"sim\" (no agent needed)")
