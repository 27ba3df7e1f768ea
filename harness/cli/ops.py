"""Operator commands: ``doctor`` (is this host ready?), ``gc`` (free what dead workers left)
and ``metrics`` (print the coordinator's Prometheus file).

Register them on the main group with ``cli_ops.register(main)``. Like
cli.py, only click is imported at module level; each command imports what it
uses. Each command reads the workspace from the global ``--root`` (cli_common).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from harness.cli.common import echo_json, usage_error, workspace

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# doctor thresholds (module constants so tests can move them)
DISK_WARN_BYTES = 5 * 2**30
DISK_FAIL_BYTES = 500 * 2**20
NOFILE_BASE = 1024
NOFILE_PER_AGENT = 64
AGENT_VERSION_TIMEOUT = 15.0
GIT_TIMEOUT = 30.0
# Variables that would point git at another repository than the one asked about.
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
                      "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                      "GIT_NAMESPACE", "GIT_PREFIX")


def register(group: click.Group) -> None:
    """Add doctor, gc and metrics to ``group`` (which must set ``ctx.obj["root"]``)."""
    for command in (doctor, gc, metrics):
        group.add_command(command)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _git(args: list[str], cwd: Any, timeout: float = GIT_TIMEOUT):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env["LC_ALL"] = "C"
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)


# -- doctor -----------------------------------------------------------------------------


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
        return FAIL, "git", "git not found on PATH (or `git version` failed); install git"
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


def _check_agent(cfg) -> tuple[str, str, str]:
    import subprocess
    import sys as _sys

    from harness.agents import presets as agents
    from harness.agents.runner import clean_env

    preset = cfg.agent.preset
    if preset == "sim":
        return PASS, "agent", f"preset sim: the simulated agent runs with {_sys.executable}"
    if preset == "shell":
        return PASS, "agent", "preset shell: each item's own command runs, no agent binary"
    if preset == "custom" and not cfg.agent.command:
        return FAIL, "agent", "preset custom needs [agent] command (an argv template)"
    name = agents.program(cfg.agent)
    if name is None:
        return PASS, "agent", (f"preset custom: program {cfg.agent.command[0]!r} is a"
                               " placeholder, not checked")
    path = agents.find_program(cfg.agent)
    if path is None:  # run refuses to start (exit 2)
        return FAIL, "agent", f"preset {preset}: `{name}` not on PATH or not executable"
    if preset == "custom":
        return PASS, "agent", f"preset custom: {path} (not run)"
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True,
                              errors="replace", timeout=AGENT_VERSION_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=clean_env(cfg.agent.env))
    except subprocess.TimeoutExpired:
        return FAIL, "agent", f"`{path} --version` did not answer in {AGENT_VERSION_TIMEOUT:g}s"
    except OSError as exc:
        return FAIL, "agent", f"`{path} --version`: {exc}"
    first = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[:1]
    if proc.returncode != 0:
        return FAIL, "agent", (f"`{path} --version` exited {proc.returncode}:"
                               f" {first[0] if first else 'no output'}")
    return PASS, "agent", f"{path}: {first[0] if first else 'version unknown'}"


def _check_env() -> tuple[str, str, str]:
    import os

    from harness.agents.runner import clean_env

    present = sorted(k for k in os.environ if k == "CLAUDECODE" or k.startswith("CLAUDE_CODE_"))
    if not present:
        return PASS, "agent-env", "no nested-session variables (CLAUDECODE, CLAUDE_CODE_*) set"
    left = sorted(set(present) & set(clean_env()))
    if left:
        return FAIL, "agent-env", f"would reach the agent despite clean_env: {', '.join(left)}"
    return PASS, "agent-env", f"stripped from the agent's environment: {', '.join(present)}"


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
    detail = f"{_size(free)} free on {ws.root}"
    if free < DISK_FAIL_BYTES:
        return FAIL, "disk", f"{detail} (< {_size(DISK_FAIL_BYTES)}): worktrees and logs need room"
    if free < DISK_WARN_BYTES:
        return WARN, "disk", f"{detail} (< {_size(DISK_WARN_BYTES)})"
    return PASS, "disk", detail


def _check_memory(cfg) -> tuple[str, str, str]:
    import psutil

    available = psutil.virtual_memory().available
    floor = cfg.run.memory_floor_mb * 2**20
    detail = f"{_size(available)} available, [run] memory_floor_mb = {cfg.run.memory_floor_mb}"
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


def run_checks(ws) -> list[tuple[str, str, str]]:
    """Every doctor check as (PASS|WARN|FAIL, name, detail), in display order."""
    config_check, cfg = _check_config(ws)
    checks = [_check_workspace(ws), config_check, _check_git(cfg), *_check_worktrees(ws, cfg), _check_agent(cfg),
              _check_env(), _check_queue_fs(ws), _check_disk(ws), _check_memory(cfg),
              _check_nofile(cfg), _check_prompt(ws, cfg)]
    return checks


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check that this host and workspace can run the harness; exit 1 on any FAIL.

    Checks git (>= 2.38 for the merge queue), worktree support in [git] repo,
    the target branch, the agent binary of the preset, nested-session
    variables, the queue filesystem, disk, memory, open file limit, the
    config and the prompt template. In a directory that is not a workspace
    yet it says so (WARN) and leaves nothing behind.

    \b
    Example:
      parallel-harness doctor --json
    """
    checks = run_checks(workspace(ctx, require=False))
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


# -- gc -----------------------------------------------------------------------------------


def _tree_bytes(path) -> int:
    """Apparent size of everything under ``path`` (symlinks not followed)."""
    import os

    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _desired_workers(ws, cfg) -> int:
    try:
        return max(0, int(ws.desired_workers_file.read_text().strip()))
    except (FileNotFoundError, ValueError):
        return cfg.run.agents


class _Fence:
    """Hold a dead worker's lock while removing its leftovers, so it cannot restart meanwhile.

    In a dry run nothing is taken: ``alive`` is just the probe.
    """

    def __init__(self, path, dry_run: bool) -> None:
        self.path, self.dry_run, self.fd = path, dry_run, None

    def __enter__(self) -> bool:
        from harness.liveness.process import hold_lock, lock_is_held

        if self.dry_run:
            return not lock_is_held(self.path)
        self.fd = hold_lock(self.path)
        return self.fd is not None

    def __exit__(self, *exc: object) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)


def _gc_worktrees(ws, cfg, dry_run: bool) -> list[dict[str, Any]]:
    import re

    from harness.repo import worktrees

    out: list[dict[str, Any]] = []
    if not ws.worktrees_dir.is_dir():
        return out
    repo = (ws.root / cfg.git.repo).resolve()
    pool = _desired_workers(ws, cfg)
    for entry in sorted(ws.worktrees_dir.iterdir()):
        rel = str(entry.relative_to(ws.root))
        row: dict[str, Any] = {"kind": "worktree", "path": rel, "bytes": 0}
        out.append(row)
        m = re.fullmatch(r"w(\d+)", entry.name)
        if not entry.is_dir() or m is None:
            row.update(action="kept", reason="not a worker slot (w<N>)")
            continue
        if int(m[1]) <= pool:
            row.update(action="kept", reason=f"slot in the pool ({pool} worker(s))")
            continue
        with _Fence(ws.worker_lock(entry.name), dry_run) as free:
            if not free:
                row.update(action="kept", reason="worker alive (lock held)")
                continue
            try:
                if worktrees.has_unsaved_work(entry):
                    row.update(action="kept", reason="unsaved work")
                    continue
                size = _tree_bytes(entry)
                if not dry_run:
                    worktrees.remove_worktree(repo, entry)
            except worktrees.UnsavedWork:
                row.update(action="kept", reason="unsaved work")
                continue
            except worktrees.GitError as exc:
                row.update(action="kept", reason=f"git error: {exc}")
                continue
            row.update(action="would remove" if dry_run else "removed", bytes=size)
    return out


def _ids_in(ws, states: tuple[str, ...]) -> set[str]:
    from harness.queue import names

    ids = set()
    for state in states:
        try:
            entries = names.entries(ws.queue_dir / state)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            parsed = names.try_parse(entry)
            if parsed is not None:
                ids.add(parsed.id)
    return ids


def _gc_logs(ws, older_than_days: float, dry_run: bool) -> list[dict[str, Any]]:
    import os
    import shutil
    import time

    out: list[dict[str, Any]] = []
    if not ws.logs_dir.is_dir():
        return out
    terminal = _ids_in(ws, ("done", "failed"))
    live = _ids_in(ws, ("pending", "claimed", "waiting"))
    cutoff = time.time() - older_than_days * 86400
    for item_dir in sorted(ws.logs_dir.iterdir()):
        if not item_dir.is_dir() or item_dir.is_symlink():
            continue
        item_id = item_dir.name
        if item_id not in terminal or item_id in live:
            continue  # live, unknown or foreign: never pruned
        for attempt_dir in sorted(item_dir.iterdir()):
            if not attempt_dir.name.isdigit() or not attempt_dir.is_dir() \
                    or attempt_dir.is_symlink():
                continue
            try:
                stamp = (attempt_dir / "result.json").stat().st_mtime
            except OSError:
                try:
                    stamp = attempt_dir.stat().st_mtime
                except OSError:
                    continue
            if stamp >= cutoff:
                continue
            size = _tree_bytes(attempt_dir)
            if not dry_run:
                shutil.rmtree(attempt_dir, ignore_errors=True)
                if attempt_dir.exists():
                    out.append({"kind": "logs", "path": str(attempt_dir.relative_to(ws.root)),
                                "action": "kept", "reason": "could not remove", "bytes": 0})
                    continue
            out.append({"kind": "logs", "path": str(attempt_dir.relative_to(ws.root)),
                        "action": "would remove" if dry_run else "removed", "bytes": size})
        if not dry_run:
            try:
                os.rmdir(item_dir)  # only succeeds once every attempt is gone
            except OSError:
                pass
    return out


def _agent_running(hb: dict[str, Any]) -> bool:
    import psutil

    pid, start = hb.get("agent_pid"), hb.get("agent_start")
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if start is not None and abs(proc.create_time() - float(start)) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


def _gc_heartbeats(ws, dry_run: bool) -> list[dict[str, Any]]:
    import os

    from harness.liveness import heartbeat
    from harness.queue import fsops

    out: list[dict[str, Any]] = []
    try:
        entries = sorted(os.listdir(ws.heartbeats_dir))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        worker = entry.removesuffix(".json")
        path = ws.heartbeats_dir / entry
        row: dict[str, Any] = {"kind": "heartbeat", "path": str(path.relative_to(ws.root)),
                               "bytes": 0}
        out.append(row)
        with _Fence(ws.worker_lock(worker), dry_run) as free:
            if not free:
                row.update(action="kept", reason="worker alive (lock held)")
                continue
            hb = heartbeat.read(path) or {}
            item = hb.get("item")
            # The coordinator recovers a dead worker's claim and kills its agent from this
            # file; leave it that job.
            if item and (ws.queue_dir / "claimed" / str(item)).exists():
                row.update(action="kept", reason=f"names claim {item} (the coordinator"
                                                 " recovers it)")
                continue
            if _agent_running(hb):
                row.update(action="kept", reason=f"its agent pid {hb['agent_pid']} still runs")
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                out.pop()
                continue
            if not dry_run and not fsops.unlink_quiet(path):
                out.pop()
                continue
            row.update(action="would remove" if dry_run else "removed", bytes=size)
    return out


@click.command()
@click.option("--logs-older-than", "older_than", type=click.FloatRange(min=0), default=30.0,
              show_default=True, metavar="DAYS",
              help="Prune attempt logs of done/failed items older than this many days.")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc(ctx: click.Context, older_than: float, dry_run: bool, as_json: bool) -> None:
    """Free what dead workers and old attempts left behind.

    \b
    Removes:
      worktrees/w<N>   N above the pool size (state/desired-workers, else
                       [run] agents), worker lock free, no unsaved work
      logs/<id>/<n>    items in done/ or failed/ only, older than --logs-older-than
                       (mtime of result.json, else of the directory)
      heartbeats       of workers whose lock is free (unless they name a live
                       claim or a running agent: the coordinator needs those)
    A worktree with uncommitted changes, untracked files or unreachable
    commits is never removed ("kept: unsaved work").

    \b
    Example:
      parallel-harness gc --dry-run
      parallel-harness gc --logs-older-than 7
    """
    from harness import config as config_mod

    ws = workspace(ctx)
    try:
        cfg = config_mod.load(ws.config_file)
    except config_mod.ConfigError as exc:
        usage_error(str(exc))
    rows = (_gc_worktrees(ws, cfg, dry_run) + _gc_logs(ws, older_than, dry_run)
            + _gc_heartbeats(ws, dry_run))
    freed = [r for r in rows if r["action"] != "kept"]
    total = sum(r["bytes"] for r in freed)
    if as_json:
        echo_json({"dry_run": dry_run, "entries": rows,
                   "freed": {"count": len(freed), "bytes": total}})
        return
    for r in rows:
        if r["action"] == "kept":
            if r["kind"] == "worktree" and r["reason"].startswith("slot in the pool"):
                continue  # the normal case; not worth a line
            click.echo(f"kept          {r['path']}: {r['reason']}")
        else:
            click.echo(f"{r['action']:<13} {r['path']} ({_size(r['bytes'])})")
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {len(freed)} entr{'y' if len(freed) == 1 else 'ies'},"
               f" {total} bytes ({_size(total)})")


# -- metrics ------------------------------------------------------------------------------


@click.command()
@click.pass_context
def metrics(ctx: click.Context) -> None:
    """Print state/metrics.prom (Prometheus text format) written by the running coordinator.

    \b
    Example:
      parallel-harness metrics | grep harness_items
    """
    from harness.pool.metrics import METRICS_FILE

    path = workspace(ctx).state_dir / METRICS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        click.echo(f"error: {path} does not exist; the coordinator writes it every tick while"
                   " `parallel-harness run` is running", err=True)
        sys.exit(1)
    click.echo(text, nl=False)
