#!/usr/bin/env python3
"""Peak RSS and time of ``recover()`` over a big queue, before and after a change.

A queue of --items pending items (``Queue.batch``, untimed; kept with --queue DIR so a
second run reuses it) is recovered by four kinds of fresh child process, each timed and
measured (``VmHWM``, the peak RSS of its own image, and the RSS after its imports, so
the figure recover adds is the difference):

- ``scandir``: the baseline, a bare ``os.scandir`` loop over the directories recover
  reads (ids/, the five state directories, tmp/), counting names;
- ``scandir+lstat``: the same with an ``lstat`` of each ids/ entry (summing link
  counts): the floor of a recover that reads every reservation's link count;
- ``before``: ``recover()`` of the tree of --before (a commit, exported with
  ``git archive`` into a temp dir);
- ``after``: ``recover()`` of this checkout.

Two queue shapes (--shapes): ``clean`` (the coordinator's usual start: nothing to do)
and ``debris``: before each run one item gets a second name (a hand link claimed/N
beside pending/N) and another loses its name, so the dedupe and lost-id paths run;
the parent undoes what recover did before the next run. Rounds (--rounds) alternate
the kinds; medians are printed, and the ratios are taken within this one run.

Run:  python3 bench/recover_rss.py --before 0438803          (1,000,000 items)
      python3 bench/recover_rss.py --before 0438803 --items 20000 --rounds 1   (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import REPO_ROOT, load_avg, machine_line, med  # noqa: E402

from harness.queue import names  # noqa: E402
from harness.queue.core import Queue  # noqa: E402

DIRS = ("ids", "pending", "claimed", "waiting", "done", "failed", "tmp")

# The child: import what recover imports (so the baselines are alike), note the RSS,
# do the work, report. argv: tree, queue root, kind.
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from harness.queue.core import Queue
from harness.queue.recovery import recover

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

root, kind = sys.argv[2], sys.argv[3]
base = rss_mb()
t = time.perf_counter()
if kind.startswith("scandir"):
    n = 0
    for d in %r:
        with os.scandir(os.path.join(root, d)) as it:
            for e in it:
                if kind == "scandir" or d != "ids":
                    n += 1
                else:
                    n += e.stat(follow_symlinks=False).st_nlink
    out = n
else:
    out = len(recover(Queue(root)))
secs = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries the pre-exec (forked) image's peak into ru_maxrss
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
print(json.dumps({"base": base, "peak": peak, "secs": secs, "out": out}))
""" % (DIRS,)


def fill(root: Path, n: int) -> None:
    """``n`` pending items t0000000… (an existing queue of that size is kept)."""
    q = Queue(root)
    have = len(os.listdir(q.dir("ids")))
    if have == n:
        return
    if have:
        raise SystemExit(f"{root} holds {have} items, not {n}: give another --queue")
    t = time.perf_counter()
    with q.batch() as batch:
        for i in range(n):
            batch.add(*q.prepare({"id": f"t{i:07d}", "command": "true"}))
    print(f"filled {n} items in {time.perf_counter() - t:.0f}s", flush=True)


def plant(q: Queue, dup: str, lost: str) -> dict[str, Path]:
    """Give ``dup`` a second name and take ``lost``'s; return the names to restore."""
    where = {i: _find_pending(q, i) for i in (dup, lost)}
    os.link(where[dup], q.dir("claimed") / where[dup].name)
    os.unlink(where[lost])
    return where


def _find_pending(q: Queue, item_id: str) -> Path:
    name = q.find(item_id, ("pending",))  # one listing, in the parent: not measured
    assert name is not None, item_id
    return q.dir("pending") / str(name)


def restore(q: Queue, where: dict[str, Path]) -> None:
    """Undo ``plant`` and what recover made of it: each item back to its pending name."""
    for item_id, path in where.items():
        for state in ("claimed", "failed"):
            for entry in (path.name, str(names.ItemName(5, _order(q, item_id), item_id, 1))):
                for p in (q.dir(state) / entry, q.dir(state) / (entry + names.REASON_SUFFIX)):
                    if p.exists():
                        p.unlink()
        if not path.exists():
            os.link(q.dir("ids") / item_id, path)


def _order(q: Queue, item_id: str) -> str:
    stamp = json.loads((q.dir("ids") / item_id).read_bytes())["enqueued_at"]
    return f"{int(stamp * 1e9):016x}"


def run_child(tree: Path, root: Path, kind: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(root), kind],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def export(rev: str, into: Path) -> Path:
    """The ``harness`` package of commit ``rev``, unpacked under ``into``."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "harness"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--before", required=True, help="commit whose recover() is 'before'")
    ap.add_argument("--queue", type=Path, help="queue directory to fill or reuse (kept)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="clean,debris")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recover-") as tmp:
        root = args.queue or Path(tmp) / "queue"
        print(machine_line(Path(tmp)), flush=True)
        fill(root, args.items)
        trees = {"scandir": REPO_ROOT, "scandir+lstat": REPO_ROOT,
                 "before": export(args.before, Path(tmp) / "before"),
                 "after": REPO_ROOT}
        q = Queue(root)
        for shape in args.shapes.split(","):
            rows: dict[str, list[dict]] = {k: [] for k in trees}
            for rnd in range(args.rounds):
                for kind, tree in trees.items():
                    where = plant(q, "t0000001", "t0000002") if shape == "debris" else {}
                    r = run_child(tree, root, kind)
                    restore(q, where)
                    rows[kind].append(r)
                    print(f"  {shape} round {rnd + 1} {kind:>13}: peak {r['peak']:7.1f} MB"
                          f" (after imports {r['base']:5.1f}), {r['secs']:6.2f} s,"
                          f" out {r['out']}; load {load_avg()}", flush=True)
            report(shape, args.items, rows)
    print(f"load average at end {load_avg()}")
    return 0


def report(shape: str, items: int, rows: dict[str, list[dict]]) -> None:
    peak = {k: med(r["peak"] for r in v) for k, v in rows.items()}
    grew = {k: med(r["peak"] - r["base"] for r in v) for k, v in rows.items()}
    secs = {k: med(r["secs"] for r in v) for k, v in rows.items()}
    print(f"\n{shape}, {items:,} pending: median peak RSS MB (growth over imports), seconds")
    for k in rows:
        print(f"  {k:>13}: {peak[k]:7.1f} ({grew[k]:6.1f})  {secs[k]:6.2f} s")
    print(f"  after/before: peak {peak['after'] / peak['before']:.3f}x,"
          f" growth {grew['after'] / max(grew['before'], 0.1):.3f}x,"
          f" time {secs['after'] / secs['before']:.2f}x;"
          f" after/scandir: peak {peak['after'] / peak['scandir']:.3f}x,"
          f" time {secs['after'] / secs['scandir']:.2f}x;"
          f" after/scandir+lstat: time {secs['after'] / secs['scandir+lstat']:.2f}x\n",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
