"""Items integrated per minute into one remote target with N pools racing (issue 13).

For each N in --pools (default 1,4,8): N workspaces (each its own clone of one
bare repository, served by ``git daemon`` on 127.0.0.1), each a pool of
--workers workers with ``integrate = "merge-push"``, each given --items
trivial shell items that add a file of their own (no conflicts). All N
coordinators start at once; the figure is done items on the remote's main per
minute of wall time, from the first start to the last exit, and the retries
per push (merge-pushed events' ``retries``: the target moved under a push).
Afterwards every item's commit must be on the remote's main.

    python3 bench/remote_contention.py --pools 1,4,8 --items 25 --workers 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _benchlib import Bench, events, load_avg, machine_line  # noqa: E402

from harness.queue.core import Queue  # noqa: E402
from tests.remotes import Daemon, bare_remote, contains, git  # noqa: E402


def run_round(bench: Bench, pools: int, items: int, workers: int) -> dict[str, float]:
    base = bench.tempdir(f"served-{pools}")
    seed = bench.workspace(f"seed-{pools}")
    remote = bare_remote(base / "team.git", seed.root)
    daemon = Daemon(base)
    try:
        spaces = []
        for n in range(pools):
            ws = bench.workspace(f"pool{pools}-{n}")
            with open(ws.config_file, "a") as f:
                f.write(f'\n[git]\nremote = "{daemon.url("team.git")}"\n'
                        'integrate = "merge-push"\nfetch_interval = 5\npush_retries = 100\n')
            queue = Queue(ws.queue_dir)
            for i in range(items):
                queue.enqueue({"id": f"p{n}-{i:03d}", "command": f"echo {i} > p{n}-{i}.txt"})
            spaces.append(ws)
        started = time.monotonic()
        procs = [bench.start_coordinator(ws, "--agents", str(workers)) for ws in spaces]
        codes = [p.wait(timeout=1800) for p in procs]
        wall = time.monotonic() - started
    finally:
        daemon.stop()
    if codes != [0] * pools:
        sys.exit(f"a pool failed: exit codes {codes}")
    retries = [e.get("retries") or 0 for ws in spaces for e in events(ws)
               if e["event"] == "merged-pushed"]
    for ws in spaces:
        for line in git(ws.root, "for-each-ref", "--format=%(objectname)",
                        "refs/heads/harness/").stdout.split():
            assert contains(remote, line), f"{line} is not on the remote's main"
    total = pools * items
    return {"pools": pools, "items": total, "wall_s": wall, "per_min": total / wall * 60,
            "retries_per_push": statistics.mean(retries) if retries else 0.0,
            "max_retries": max(retries, default=0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="1,4,8")
    parser.add_argument("--items", type=int, default=25, help="items per pool")
    parser.add_argument("--workers", type=int, default=1, help="workers per pool")
    args = parser.parse_args()
    with Bench("harness-remote-") as bench:
        print(machine_line(bench.tempdir("probe")), flush=True)
        rows = [run_round(bench, int(n), args.items, args.workers)
                for n in args.pools.split(",")]
    print(f"\n{'pools':>5} {'items':>6} {'wall s':>8} {'items/min':>10} {'retries/push':>13}"
          f" {'max':>4}")
    for r in rows:
        print(f"{r['pools']:>5} {r['items']:>6} {r['wall_s']:>8.1f} {r['per_min']:>10.1f}"
              f" {r['retries_per_push']:>13.2f} {r['max_retries']:>4}")
    one = rows[0]["per_min"]
    for r in rows[1:]:
        print(f"N={r['pools']}: {r['per_min'] / one:.2f}x the integration rate of N=1")
    print(f"load average at the end: {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
