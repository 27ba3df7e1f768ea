#!/usr/bin/env python3
"""The coordinator's memory over a long run: its RSS must stay flat (within 10%).

A fresh workspace gets --items items (``command: true``, shell preset, enqueued
through ``Queue.batch``, untimed); ``python -m harness.cli run --agents N`` runs them
to the end. Every --every seconds the coordinator's RSS (from /proc, via psutil) and
the count of done items are sampled. The baseline is the median RSS while 5-15% of the
items are done (start-up allocations settled); the figure is the largest RSS after
that, as a ratio to the baseline.

Target (issue 15): over a 100,000-item soak the coordinator's RSS stays within
+-10% of its settled size.

Run:  python3 bench/coordinator_soak.py                  (100,000 items, 2 agents)
      python3 bench/coordinator_soak.py --items 5000     (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import Bench, load_avg, machine_line, med  # noqa: E402

import psutil  # noqa: E402

from harness.queue.core import Queue  # noqa: E402

TARGET = 1.10


def fill(queue_dir: Path, n: int) -> None:
    q = Queue(queue_dir)
    with q.batch() as batch:
        for i in range(n):
            batch.add(*q.prepare({"id": f"s{i:07d}", "command": "true"}))


def sample(pid: int, done_dir: Path) -> tuple[float, int] | None:
    """(RSS in MB, items done), or None once the coordinator is gone."""
    try:
        rss = psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None
    with os.scandir(done_dir) as it:
        done = sum(1 for e in it if not e.name.startswith("."))
    return rss, done


def soak(bench: Bench, items: int, agents: int, every: float) -> list[tuple[float, float, int]]:
    """The samples (seconds since start, RSS MB, done) of one run to the end."""
    ws = bench.workspace("soak")
    fill(ws.queue_dir, items)
    print(f"  enqueued {items} items", flush=True)
    start = time.monotonic()
    proc = bench.start_coordinator(ws, "--agents", str(agents), "--quiet")
    samples, last_print = [], 0
    while proc.poll() is None:
        got = sample(proc.pid, ws.queue_dir / "done")
        if got is not None:
            samples.append((time.monotonic() - start, *got))
            if got[1] - last_print >= items // 10:
                last_print = got[1]
                print(f"  {got[1]:>7} done  rss {got[0]:6.1f} MB  {samples[-1][0]:6.0f}s",
                      flush=True)
        time.sleep(every)
    if proc.returncode != 0:
        print(f"coordinator exited {proc.returncode}: see {ws.root / 'coordinator.out'}")
    return samples


def report(samples: list[tuple[float, float, int]], items: int) -> float:
    settled = [rss for _, rss, done in samples if 0.05 * items <= done <= 0.15 * items]
    later = [(rss, done) for _, rss, done in samples if done > 0.15 * items]
    base = med(settled)
    peak, at = max(later) if later else (float("nan"), 0)
    for frac in (0.1, 0.25, 0.5, 0.75, 1.0):
        near = [rss for _, rss, done in samples if done <= frac * items]
        if near:
            print(f"  rss at {int(frac * 100):>3}% done: {near[-1]:6.1f} MB")
    wall = samples[-1][0] if samples else float("nan")
    print(f"throughput: {items / wall:.1f} items/s ({items} items in {wall:.0f}s)")
    ratio = peak / base
    print(f"target coordinator RSS flat within 10%: peak {peak:.1f} MB (at {at} done) vs"
          f" settled {base:.1f} MB = {ratio:.3f}x {'PASS' if ratio <= TARGET else 'FAIL'}",
          flush=True)
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    with Bench("soak-bench-", keep=args.keep) as bench:
        print(machine_line(bench.tempdir("probe")))
        print(f"command: python3 bench/coordinator_soak.py {' '.join(sys.argv[1:])}".rstrip())
        samples = soak(bench, args.items, args.agents, args.every)
        report(samples, args.items)  # before the cleanup: removing 100k items' logs is slow
        print(f"load average at end: {load_avg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
