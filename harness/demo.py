"""``parallel-harness demo``: a self-contained run in a temporary git workspace.

Builds a small repository, enqueues a dozen items (quick ones, a slow one,
one that fails on its first attempt and succeeds on its retry), runs the
coordinator with N workers in a child process while printing progress, then
prints the summary and the paths to look at.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.queue import Queue
from harness.status import collect, render_text
from harness.workspace import Workspace

DEMO_CONFIG = """\
# demo settings: short timings so the demo finishes in seconds
[run]
tick = 0.1
heartbeat_interval = 0.2
stale_after = 5
orphan_grace = 2
backoff_base = 0.5
max_consecutive_failures = 0
memory_floor_mb = 0

[git]
target_branch = "main"
"""

GIT_ENV = {"GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid"}


def make_repo(root: Path) -> None:
    import os

    env = {**os.environ, **GIT_ENV}
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# demo project\n")
    (root / "harness.toml").write_text(DEMO_CONFIG)
    for args in (["init", "-q", "-b", "main"], ["add", "README.md"],
                 ["commit", "-q", "-m", "initial commit"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as f:
        f.write("/harness.toml\n/queue/\n/state/\n/worktrees/\n/logs/\n")


def demo_items(fast: bool) -> list[dict]:
    pause = 0.2 if fast else 0.8
    items = [{"id": f"task-{i:02d}", "title": f"Write notes/{i:02d}.txt",
              "command": f"sleep {pause}; mkdir -p notes; echo 'task {i}' > notes/{i:02d}.txt"}
             for i in range(1, 10)]
    items.append({"id": "slow-build", "title": "A slow item", "priority": "low",
                  "command": f"sleep {pause * 4}; echo built > build.txt"})
    items.append({"id": "flaky-test", "title": "Fails once, then passes", "priority": "high",
                  "command": 'test "$HARNESS_ATTEMPT" -ge 2 && echo passed > flaky.txt'})
    items.append({"id": "docs", "title": "Runs after task-01 and task-02",
                  "depends_on": ["task-01", "task-02"],
                  "command": "cat notes/*.txt > docs.txt 2>/dev/null; echo docs >> docs.txt"})
    return items


def run_demo(agents: int, keep: bool, fast: bool) -> int:
    root = Path(tempfile.mkdtemp(prefix="harness-demo-"))
    ws = Workspace.at(root)
    make_repo(root)
    queue = Queue(ws.queue_dir)
    for item in demo_items(fast):
        queue.enqueue(item)
    print(f"demo workspace: {root}\n{len(demo_items(fast))} items enqueued; running {agents}"
          f" workers\n", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "--root", str(root), "run",
                             "--agents", str(agents)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = ""
    try:
        while proc.poll() is None:
            view = render_text(collect(ws))
            if view != last:
                print(view + "\n", flush=True)
                last = view
            time.sleep(0.5)
    except KeyboardInterrupt:
        proc.terminate()
    output = proc.communicate()[0]
    print(output.strip())
    print(f"\nlook at:  ls {root}/queue/done   cat {root}/state/events.jsonl"
          f"   ls {root}/logs   git -C {root} branch --list 'harness/*'")
    if keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        print("(workspace removed; use --keep to keep it)")
    return proc.returncode or 0

