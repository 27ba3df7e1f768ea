#!/usr/bin/env python3
"""Where one no-change item's time goes inside the worker, and whose CPU it is.

The worker's claim/process loop runs in this process over a fresh workspace (as
bench/overhead.py's in-process peer: shell preset, agent ``true``, one worktree reused),
with each step of an item wrapped in a timer. Printed per item: wall time; this process's
user and system CPU (os.times) and its children's (the agent, the gate's /bin/sh, the git
ref streams); then each step's wall time and calls. Steps nest (runner.run holds _spawn
and _pump; queue.claim holds the claim's heartbeat), so they do not add up.

On this machine's disk the system time swings by up to 10x between runs: ext4 here skips
inodes freed in the last minute, one buffer lookup each (docs/benchmarks.md, *Enqueue*),
so a run right after another that removed many files creates its files far slower. The
user CPU is the steadier figure; compare runs taken a few minutes apart.

Run:  python3 bench/item_phases.py [items]      (default 200, after one untimed item)
"""

from __future__ import annotations

import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # noqa: E402
from _benchlib import Bench, machine_line  # noqa: E402

from harness import config as config_mod  # noqa: E402
from harness import workspace as workspace_mod  # noqa: E402
from harness.agents import orphans, runner  # noqa: E402
from harness.liveness import heartbeat  # noqa: E402
from harness.pool import attempt as attempt_mod  # noqa: E402
from harness.pool import worker as worker_mod  # noqa: E402
from harness.repo import worktrees  # noqa: E402

WALL: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str, label: str | None = None) -> None:
    """Replace ``owner.name`` with a wrapper that adds its wall time to WALL[label]."""
    real, label = getattr(owner, name), label or name

    def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            WALL[label] += time.perf_counter() - t0
            CALLS[label] += 1

    setattr(owner, name, wrapper)


STEPS = [
    (heartbeat.HeartbeatWriter, "beat", "heartbeat write"),
    (workspace_mod.Workspace, "log_event", "event append"),
    (worktrees, "ensure_worktree", None), (worktrees, "start_attempt", None),
    (worktrees, "commit_attempt", None),
    (runner, "run", "runner.run"), (runner, "_spawn", "  runner._spawn (fork, exec the gate)"),
    (runner, "_pump", "  runner._pump (until the agent exits)"),
    (runner.psutil, "Process", "  psutil.Process"),
    (worker_mod.Worker, "_record_retrying", "record (complete + accept)"),
    (worker_mod.Worker, "_write_results", "metrics.json, result.json, event"),
    (orphans, "marked", "escaped-process sweep"), (attempt_mod, "check_inside", None),
    (attempt_mod.AttemptRunner, "_agent_started", "agent-start beat + event"),
]


def main() -> int:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for owner, name, label in STEPS:
        timed(owner, name, label)
    with Bench("phases") as bench:
        ws = bench.workspace("phases", {"coordinator_gone_after": 3600})
        print(machine_line(ws.root))
        overhead.enqueue_true(ws, items + 1, "p")
        w = worker_mod.Worker(ws, config_mod.load(ws.config_file), "w1", "inproc")
        timed(w.queue, "claim", "queue.claim (+ its heartbeat)")
        w.beat(force=True, state="idle")
        first = w.queue.claim(on_claim=w._record_claim)
        assert first is not None
        w.process(first)  # the worktree's git worktree add: left out
        WALL.clear()
        CALLS.clear()
        t0, r0, done = time.perf_counter(), os.times(), 0
        while (claim := w.queue.claim(on_claim=w._record_claim)) is not None:
            w.process(claim)
            done += 1
        wall, r1 = time.perf_counter() - t0, os.times()
        w.hb.remove()
        if w.reuse is not None:
            w.reuse.close()
    if done != items:
        raise SystemExit(f"processed {done} of {items} items")
    per = 1e3 / done
    print(f"{done} items: {wall * per:.2f} ms wall an item; CPU an item: this process"
          f" user {(r1.user - r0.user) * per:.2f} + system {(r1.system - r0.system) * per:.2f}"
          f" ms, its children user {(r1.children_user - r0.children_user) * per:.2f}"
          f" + system {(r1.children_system - r0.children_system) * per:.2f} ms")
    for label, secs in sorted(WALL.items(), key=lambda kv: -kv[1]):
        print(f"  {label:44s} {secs * per:6.3f} ms  ({CALLS[label] / done:.1f} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
