"""``parallel-harness init``: lay out a workspace in a git repository.

Writes a commented harness.toml, prompts/bootstrap.md and the runtime
directories, and lists the runtime directories in .git/info/exclude so the
operator's ``git status`` stays clean. Never overwrites an existing file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness import config
from harness.agents import prompts
from harness.workspace import Workspace

RUNTIME = ("/queue/", "/state/", "/worktrees/", "/logs/")


class ScaffoldError(Exception):
    pass


def git_dir(root: Path) -> Path:
    proc = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ScaffoldError(f"{root} is not in a git repository; run `git init` there first"
                            " (workers make their worktrees from it)")
    return Path(proc.stdout.strip())


def init(root: Path, preset: str) -> list[str]:
    """Create the workspace at ``root``; return the paths created. Refuses to overwrite."""
    root = root.resolve()
    if not root.is_dir():
        raise ScaffoldError(f"{root}: no such directory")
    gdir = git_dir(root)
    ws = Workspace.at(root)
    template = root / "prompts" / "bootstrap.md"
    existing = [str(p) for p in (ws.config_file, template) if p.exists()]
    if existing:
        raise ScaffoldError(f"refusing to overwrite {', '.join(existing)}; move it away first")
    created = []
    from harness.repo.worktrees import current_branch

    # Attempts start from the branch the operator is on, not an assumed "main"
    # (git init still makes "master" on many hosts).
    ws.config_file.write_text(config.render_toml(preset, current_branch(root)))
    created.append(str(ws.config_file))
    template.parent.mkdir(exist_ok=True)
    template.write_text(prompts.DEFAULT_BOOTSTRAP)
    created.append(str(template))
    ws.make_dirs()
    from harness.queue.core import Queue

    Queue(ws.queue_dir)
    created += [str(ws.queue_dir) + "/", str(ws.state_dir) + "/", str(ws.worktrees_dir) + "/"]
    exclude = gdir / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    have = exclude.read_text().splitlines() if exclude.exists() else []
    missing = [p for p in RUNTIME if p not in have]
    if missing:
        with exclude.open("a") as f:
            f.write("# parallel-harness runtime directories\n" + "\n".join(missing) + "\n")
        created.append(f"{exclude} (+{' '.join(missing)})")
    return created
