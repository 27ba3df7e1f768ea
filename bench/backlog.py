#!/usr/bin/env python3
"""Pool throughput with a huge backlog against a small one: same workers, same trivial agent.

For each backlog size (--backlogs, default 1,000 and 1,000,000) a fresh workspace gets
that many items (``command: true``, shell preset), enqueued through ``Queue.batch``
(untimed), then ``python -m harness.cli run --agents N --forever`` runs until --measure
items are done (counted from the event log), and is stopped with SIGTERM. Throughput is
taken from the event log between the --warmup-th and the last attempt-end, so start-up
(interpreters, worktrees) is left out. Rounds alternate the sizes (--rounds); medians.
The coordinator's peak RSS is read from /proc while it runs.

Target (issue 15): throughput with 1,000,000 pending >= 0.9 x with 1,000 pending.

Run:  python3 bench/backlog.py                 (1,000 vs 1,000,000; generating the big
                                                 backlog takes minutes on this disk)
      python3 bench/backlog.py --quick         (1,000 vs 20,000, 150 items measured)
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import Bench, events, load_avg, machine_line, med, wait_for  # noqa: E402

import psutil  # noqa: E402

from harness.queue.core import Queue  # noqa: E402

TARGET = 0.9


def fill(queue_dir: Path, n: int) -> float:
    q, t = Queue(queue_dir), time.perf_counter()
    with q.batch() as batch:
        for i in range(n):
            batch.add(*q.prepare({"id": f"t{i:07d}", "command": "true"}))
    return time.perf_counter() - t


def run_once(bench: Bench, backlog: int, agents: int, measure: int, warmup: int
             ) -> tuple[float, float]:
    """(items/s between the warmup-th and the measure-th attempt-end, coordinator peak MB)."""
    ws = bench.workspace(f"b{backlog}")
    secs = fill(ws.queue_dir, backlog)
    print(f"  backlog {backlog}: enqueued in {secs:.1f}s", flush=True)
    proc = bench.start_coordinator(ws, "--agents", str(agents), "--forever")
    peak = 0.0

    def ends() -> list[float]:
        return [e["ts"] for e in events(ws) if e.get("event") == "attempt-end"]

    def enough() -> bool:
        nonlocal peak
        try:
            peak = max(peak, psutil.Process(proc.pid).memory_info().rss / 2**20)
        except psutil.Error:
            pass
        return len(ends()) >= measure
    wait_for(enough, 600, f"{measure} items done", step=0.2)
    proc.send_signal(signal.SIGTERM)
    bench.stop_coordinator(proc)
    ts = sorted(ends())[warmup:measure]
    return (len(ts) - 1) / (ts[-1] - ts[0]), peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backlogs", default=None, help="comma list (default 1000,1000000)")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--measure", type=int, default=None, help="items done per run (400)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in (args.backlogs or ("1000,20000" if args.quick else
                                                "1000,1000000")).split(",")]
    measure = args.measure or (150 if args.quick else 400)
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    with Bench("backlog-bench-", keep=args.keep) as bench:
        print(machine_line(bench.tempdir("probe")))
        print(f"command: python3 bench/backlog.py {' '.join(sys.argv[1:])}".rstrip())
        for r in range(args.rounds):
            for size in sizes:
                rate, peak = run_once(bench, size, args.agents, measure, warmup=measure // 5)
                rates[size].append(rate)
                print(f"round {r + 1} backlog {size:>8}: {rate:7.1f} items/s"
                      f" (agents {args.agents}), coordinator peak RSS {peak:.0f} MB", flush=True)
    small, big = min(sizes), max(sizes)
    x = med(rates[big]) / med(rates[small])
    print(f"target throughput({big} pending) >= {TARGET} x throughput({small} pending):"
          f" {x:.2f}x ({med(rates[big]):.1f} vs {med(rates[small]):.1f} items/s, medians)"
          f" {'PASS' if x >= TARGET else 'FAIL'}")
    print(f"load average at end: {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
