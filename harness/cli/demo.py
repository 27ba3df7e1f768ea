"""``parallel-harness demo``: a self-contained run in a temporary git workspace.

Builds a small repository, enqueues a dozen items for the built-in ``sim``
agent (successes, a slow one, one that fails then succeeds, one whose agent
stalls and is retried, two that conflict at merge, one that waits for two
others), runs the coordinator with N workers in a child process under a live
view, then prints the summary and the paths to look at. No network needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.queue import names
from harness.agents.prompts import DEFAULT_BOOTSTRAP
from harness.queue.core import Queue
from harness.paths import user_umask
from harness.workspace import Workspace

DEMO_CONFIG = """\
# demo settings: short timings so the demo finishes in seconds
[run]
tick = 0.1
heartbeat_interval = 0.2
stale_after = 10
stall_after = {stall}
orphan_grace = 2
backoff_base = 0.3
max_consecutive_failures = 0
memory_floor_mb = 0

[agent]
preset = "sim"

[git]
target_branch = "main"
integrate = "merge"
"""

GIT_ENV = {"GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid"}
CONFLICTING = ("greeting-en", "greeting-fr")


def make_repo(root: Path, config: str = "") -> None:
    """A git repo on branch main with one commit, runtime dirs excluded, and ``config``."""
    env = {**os.environ, **GIT_ENV}
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# demo project\n")
    (root / "shared.txt").write_text("hello\n")
    for args in (["init", "-q", "-b", "main"], ["add", "README.md", "shared.txt"],
                 ["commit", "-q", "-m", "initial commit"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True,
                       umask=user_umask())
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as f:
        f.write("/harness.toml\n/prompts/\n/queue/\n/state/\n/worktrees/\n/logs/\n")
    (root / "harness.toml").write_text(config)
    (root / "prompts").mkdir(exist_ok=True)
    (root / "prompts" / "bootstrap.md").write_text(DEFAULT_BOOTSTRAP)


def demo_items(fast: bool) -> list[dict]:
    secs = 0.3 if fast else 1.5
    items: list[dict] = [
        {"id": f"task-{i:02d}", "title": f"Write notes/{i:02d}.txt",
         "prompt": f"Write notes/{i:02d}.txt",
         "meta": {"sim": {"behavior": "succeed", "seconds": secs, "file": f"notes/{i:02d}.txt"}}}
        for i in range(1, 8)]
    items += [
        {"id": "slow-build", "title": "A slow build", "priority": "low",
         "meta": {"sim": {"behavior": "slow", "seconds": secs * 4}}},
        {"id": "flaky-test", "title": "Fails once, then passes", "priority": "high",
         "meta": {"sim": {"fail_attempts": 1, "seconds": secs}}},
        {"id": "stuck-agent", "title": "Agent stalls once, is killed and retried",
         "meta": {"sim": {"behavior": "hang", "times": 1}}},
        *({"id": c, "title": f"Rewrite shared.txt ({c})",
           "meta": {"sim": {"behavior": "conflict", "file": "shared.txt", "seconds": secs}}}
          for c in CONFLICTING),
        {"id": "docs", "title": "Runs after task-01 and task-02",
         "depends_on": ["task-01", "task-02"], "meta": {"sim": {"seconds": secs}}},
    ]
    return items


def outcome(ws: Workspace) -> tuple[list[str], list[str]]:
    """(done ids, failed ids) on disk."""
    ids = {state: sorted(n.id for n in map(names.try_parse,
                                           names.entries(ws.queue_dir / state)) if n)
           for state in ("done", "failed")}
    return ids["done"], ids["failed"]


LOOK_AT = """\
  ls queue/claimed queue/done queue/failed   one file per item, named by its state
  cat state/heartbeats/w1.json               what a worker is doing (while running)
  cat state/events.jsonl                     what the coordinator did, a JSON line per event
  ls logs/*/*                                each agent session: events.jsonl, result.json, ...
  git log --oneline --graph main             the merged work
  parallel-harness --root . status           the same from the CLI (also: ls, show, sessions)"""


def run_demo(agents: int, keep: bool, fast: bool, root: Path | None = None) -> int:
    """Run the demo; 0 if it ended as designed (everything done but one of the conflicting pair).

    ``root``: build it there (new or empty) instead of a temporary directory.
    """
    from harness.cli.live import watch
    from harness.cli.render import render_summary
    from harness.views.status import collect

    root = root.resolve() if root is not None else Path(tempfile.mkdtemp(prefix="harness-demo-"))
    ws = Workspace.at(root)
    make_repo(root, DEMO_CONFIG.format(stall=1.0 if fast else 2.0))
    queue = Queue(ws.queue_dir)
    items = demo_items(fast)
    for item in items:
        queue.enqueue(item)
    print(f"demo workspace: {root}\n{len(items)} items for the sim agent; {agents} workers\n",
          flush=True)
    log = root / "coordinator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "--root", str(root), "run",
                                 "--agents", str(agents)], stdout=out, stderr=subprocess.STDOUT)
    try:
        watch(ws, 0.25, until=lambda: proc.poll() is not None)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
    done, failed = outcome(ws)
    print("\n" + render_summary(collect(ws), look_at=False))
    as_designed = len(done) == len(items) - 1 and len(failed) == 1 and failed[0] in CONFLICTING
    print(f"{'as designed' if as_designed else 'NOT as designed'}: {len(done)} done,"
          f" {len(failed)} failed ({', '.join(failed) or 'none'}; one of {'/'.join(CONFLICTING)}"
          " is expected to fail with a merge conflict)\n")
    if keep:
        print(f"kept: {root}\nlook at (cd {root}):")
    else:
        shutil.rmtree(root, ignore_errors=True)
        print("workspace removed (--keep keeps it); in a kept workspace, look at:")
    print(LOOK_AT)
    return 0 if as_designed else 1
