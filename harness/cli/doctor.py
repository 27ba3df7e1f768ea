"""``doctor``: is this host and workspace ready to run the harness?"""

from __future__ import annotations

import sys
from typing import Any

import click

from harness.cli import agent_checks
from harness.cli.agent_checks import FAIL, INSTALL, PASS, WARN
from harness.cli.common import echo_json, workspace
from harness.cli.render import size

# thresholds (module constants so tests can move them)
DISK_WARN_BYTES = 5 * 2**30
DISK_FAIL_BYTES = 500 * 2**20
NOFILE_BASE = 1024
NOFILE_PER_AGENT = 64
GIT_TIMEOUT = 30.0
# Variables that would point git at another repository than the one asked about.
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
                      "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                      "GIT_NAMESPACE", "GIT_PREFIX")


def _git(args: list[str], cwd: Any, timeout: float = GIT_TIMEOUT):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env["LC_ALL"] = "C"
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)


def _check_config(ws) -> tuple[tuple[str, str, str], Any]:
    from harness import config as config_mod

    try:
        cfg = config_mod.load(ws.config_file)
    except config_mod.ConfigError as exc:
        return (FAIL, "config", f"{exc} (other checks use the defaults)"), config_mod.Config()
    where = str(ws.config_file) if ws.config_file.exists() else "no harness.toml, defaults"
    return (PASS, "config", f"{where}: valid (preset {cfg.agent.preset},"
                            f" {cfg.run.agents} agent(s))"), cfg


def _check_git(cfg) -> tuple[str, str, str]:
    import shutil

    from harness.repo import merge

    path = shutil.which("git")
    version = merge.git_version()
    if path is None or version is None:
        return FAIL, "git", ("git not found on PATH (or `git version` failed); install it:"
                             f" `{INSTALL['git']}`")
    text = ".".join(map(str, version))
    need = ".".join(map(str, merge.MERGE_TREE_MIN_VERSION))
    if version[:2] < merge.MERGE_TREE_MIN_VERSION:
        used = "used" if cfg.git.integrate == "merge" else "not enabled now"
        return WARN, "git", (f"git {text} at {path} < {need}: the merge queue ([git] integrate ="
                             f" \"merge\", {used}) needs `git merge-tree --write-tree`;"
                             " fast-forwards still work")
    return PASS, "git", f"git {text} at {path} (>= {need}: merge-tree --write-tree available)"


def _check_worktrees(ws, cfg) -> list[tuple[str, str, str]]:
    import subprocess

    from harness.repo import worktrees

    repo = (ws.root / cfg.git.repo).resolve()
    if not (repo / ".git").exists():
        return [(FAIL, "worktrees", f"{repo} is not a git repository ([git] repo = "
                                    f"{cfg.git.repo!r}); workers need one for their worktrees")]
    try:
        proc = _git(["worktree", "list", "--porcelain"], repo)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [(FAIL, "worktrees", f"`git worktree list` in {repo}: {exc}")]
    if proc.returncode != 0:
        return [(FAIL, "worktrees", f"`git worktree list` in {repo} exited {proc.returncode}:"
                                    f" {proc.stderr.strip()}")]
    count = sum(1 for line in proc.stdout.splitlines() if line.startswith("worktree "))
    out = [(PASS, "worktrees", f"`git worktree list` works in {repo} ({count} registered)")]
    target = cfg.git.target_branch
    head = worktrees.branch_head(repo, target)
    if head is None:
        out.append((FAIL, "target-branch", f"branch {target!r} ([git] target_branch) has no"
                                           f" commit in {repo}; every attempt starts from it"))
    else:
        out.append((PASS, "target-branch", f"{target} at {head[:12]}"))
    return out


def _check_queue_fs(ws) -> tuple[str, str, str]:
    import shutil
    import tempfile

    from harness.queue.fsops import UnsupportedFilesystem
    from harness.queue.core import Queue

    if not ws.root.is_dir():
        return FAIL, "queue-fs", f"workspace {ws.root} does not exist"
    # Not a workspace yet: probe a throw-away queue beside where it would be, so that
    # doctor leaves nothing behind (a queue/ would make the directory a workspace).
    scratch = None if ws.exists() else tempfile.mkdtemp(prefix=".harness-doctor-", dir=ws.root)
    where = ws.queue_dir if scratch is None else ws.root
    try:
        Queue(ws.queue_dir if scratch is None else scratch).probe()
    except UnsupportedFilesystem as exc:
        return FAIL, "queue-fs", str(exc)
    except OSError as exc:
        return FAIL, "queue-fs", f"{where}: {exc}"
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return PASS, "queue-fs", f"{where}: O_EXCL, link, rename and directory fsync work"


def _check_disk(ws) -> tuple[str, str, str]:
    import shutil

    try:
        free = shutil.disk_usage(ws.root).free
    except OSError as exc:
        return FAIL, "disk", f"{ws.root}: {exc}"
    detail = f"{size(free)} free on {ws.root}"
    if free < DISK_FAIL_BYTES:
        return FAIL, "disk", f"{detail} (< {size(DISK_FAIL_BYTES)}): worktrees and logs need room"
    if free < DISK_WARN_BYTES:
        return WARN, "disk", f"{detail} (< {size(DISK_WARN_BYTES)})"
    return PASS, "disk", detail


def _check_memory(cfg) -> tuple[str, str, str]:
    import psutil

    available = psutil.virtual_memory().available
    floor = cfg.run.memory_floor_mb * 2**20
    detail = f"{size(available)} available, [run] memory_floor_mb = {cfg.run.memory_floor_mb}"
    if available < floor:
        return WARN, "memory", f"{detail}: no new workers start while below the floor"
    return PASS, "memory", detail


def _check_nofile(cfg) -> tuple[str, str, str]:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = NOFILE_BASE + NOFILE_PER_AGENT * cfg.run.agents
    if soft == resource.RLIM_INFINITY:
        return PASS, "open-files", f"soft RLIMIT_NOFILE unlimited (want >= {need})"
    if soft < need:
        return WARN, "open-files", (f"soft RLIMIT_NOFILE {soft} < {need} ({NOFILE_BASE} +"
                                    f" {NOFILE_PER_AGENT} x {cfg.run.agents} agents); raise it"
                                    " with `ulimit -n`")
    return PASS, "open-files", f"soft RLIMIT_NOFILE {soft} (want >= {need})"


def _check_prompt(ws, cfg) -> tuple[str, str, str]:
    from harness.agents import prompts

    if cfg.agent.preset == "shell":
        return PASS, "prompt", "preset shell uses no prompt template"
    path = ws.root / cfg.paths.bootstrap
    try:
        prompts.check_static(prompts.load_template(path), str(path))
    except prompts.PromptError as exc:
        return FAIL, "prompt", str(exc)
    return PASS, "prompt", f"{path}: variables valid"


def _check_workspace(ws) -> tuple[str, str, str]:
    if ws.exists():
        return PASS, "workspace", str(ws.root)
    return WARN, "workspace", (f"{ws.root} is not a workspace yet (no harness.toml, no queue/):"
                               " `parallel-harness init` makes one")


def _check_remote(ws, cfg) -> tuple[str, str, str]:
    """With [git] remote: it answers and has the target branch (one ls-remote)."""
    from harness.repo.remote import Remote, RemoteError, redact

    git = cfg.git
    if not git.remote:
        return PASS, "remote", ("no remote: results stay in the repository"
                                f" (integrate = {git.integrate})")
    repo = (ws.root / git.repo).resolve()
    try:
        sha = Remote(repo, git.remote).remote_sha(git.target_branch)
    except RemoteError as exc:
        return FAIL, "remote", f"{redact(git.remote)}: {exc}"
    if sha is None:
        return WARN, "remote", (f"{redact(git.remote)} answers but has no {git.target_branch};"
                                " the first delivery creates it")
    return PASS, "remote", f"{redact(git.remote)} answers: {git.target_branch} at {sha[:12]}"


def _check_private(ws) -> tuple[str, str, str]:
    """logs/ and state/ hold prompts, transcripts and agent output: not for other users."""
    open_to = []
    for d in (ws.logs_dir, ws.state_dir):
        try:
            mode = d.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            open_to.append(f"{d.name}/ is {oct(mode & 0o777)}")
    if open_to:
        return WARN, "private", (f"{', '.join(open_to)} (made by an older version?): others can"
                                 f" read prompts and transcripts; chmod 700"
                                 f" {ws.logs_dir} {ws.state_dir}")
    return PASS, "private", "logs/ and state/ are readable by their owner only"


def run_checks(ws, check_auth: bool = False) -> list[tuple[str, str, str]]:
    """Every doctor check as (PASS|WARN|FAIL, name, detail), in display order; with
    ``check_auth`` one real request through the agent as well."""
    config_check, cfg = _check_config(ws)
    agent = [agent_checks.check_agent(cfg), agent_checks.check_env(cfg),
             *agent_checks.check_login(cfg)]
    if check_auth:
        agent += agent_checks.check_auth(cfg)
    return [_check_workspace(ws), config_check, _check_git(cfg), *_check_worktrees(ws, cfg),
            *agent, _check_queue_fs(ws), _check_disk(ws), _check_memory(cfg),
            _check_nofile(cfg), _check_prompt(ws, cfg), _check_private(ws),
            _check_remote(ws, cfg)]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--check-auth", is_flag=True,
              help="Also send one tiny request through the agent CLI: does the API take its"
                   " login? (claude, codex; costs one request)")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, check_auth: bool) -> None:
    """Check that this host and workspace can run the harness; exit 1 on any FAIL.

    Checks git (>= 2.38 for the merge queue), worktree support in [git] repo,
    the target branch, the agent binary of the preset and its version (against
    the tested ones), nested-session variables, the agent's login (claude auth
    status; codex's provider and key), the queue filesystem, disk, memory, open
    file limit, the config and the prompt template. In a directory that is not
    a workspace yet it says so (WARN) and leaves nothing behind.

    \b
    Examples:
      parallel-harness doctor --json
      parallel-harness doctor --check-auth
    """
    checks = run_checks(workspace(ctx, require=False), check_auth=check_auth)
    counts = {s: sum(1 for c in checks if c[0] == s) for s in (PASS, WARN, FAIL)}
    if as_json:
        echo_json({"ok": counts[FAIL] == 0,
                    "checks": [{"status": s, "name": n, "detail": d} for s, n, d in checks],
                    "counts": {k.lower(): v for k, v in counts.items()}})
    else:
        width = max(len(n) for _, n, _ in checks)
        for status, name, detail in checks:
            click.echo(f"{status}  {name:<{width}}  {detail}")
        click.echo(f"{counts[PASS]} passed, {counts[WARN]} warning(s), {counts[FAIL]} failed")
    sys.exit(1 if counts[FAIL] else 0)
