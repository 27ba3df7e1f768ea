#!/usr/bin/env python3
"""The queue hammer and the chaos tests with a 100,000-item queue (issue 15).

Runs, with HARNESS_TEST_BACKLOG=N (tests/procs.py: queue_size), the default suite's

  tests/test_hammer.py::test_eight_processes_claim_and_complete_every_item_exactly_once
      8 processes claim and complete N items: each exactly once, none lost;
  tests/test_hammer.py::test_chaos_failures_and_coordinator_revokes_keep_every_item_in_one_terminal_state
      N items, workers failing 15% and hanging 1% of attempts, every claim older
      than 5 ms revoked while workers race to finish it: one terminal state each;
  tests/test_coordinator.py::test_chaos_kills_and_stops_lose_nothing
      150 shell items run by `run --agents 8` under random SIGKILL of workers and
      coordinator and SIGSTOP/SIGCONT of workers, while N-150 more wait behind them
      in pending/; then `cancel --pending`; every one of the N in done/ or failed/.

Each test's own assertions are the verdict (queue.invariants.check, the reports of
every claim); this script prints each test's outcome and time, and exits non-zero if
one failed. Too slow for the default suite (minutes per test at 100,000).

    python3 bench/backlog_chaos.py                 # N = 100,000 (pytest from .venv if there)
    python3 bench/backlog_chaos.py --items 20000 --quick
    python3 bench/backlog_chaos.py --only 3        # the third test alone
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_hammer.py::test_eight_processes_claim_and_complete_every_item_exactly_once",
    "tests/test_hammer.py::test_chaos_failures_and_coordinator_revokes_keep_every_item_in_one_"
    "terminal_state",
    "tests/test_coordinator.py::test_chaos_kills_and_stops_lose_nothing",
]


def test_python() -> str:
    """The checkout's venv (the README's test command makes it), which has the test extras;
    else this interpreter."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_one(test: str, items: int, base: Path) -> tuple[bool, float, str]:
    env = {**os.environ, "HARNESS_TEST_BACKLOG": str(items)}
    t0 = time.monotonic()
    done = subprocess.run([test_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={base}", test], cwd=REPO, env=env,
                          capture_output=True, text=True)
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return done.returncode == 0, time.monotonic() - t0, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000, help="items in the queue")
    ap.add_argument("--quick", action="store_true", help="the two queue tests only")
    ap.add_argument("--only", type=int, choices=range(1, len(TESTS) + 1), default=None,
                    help="run only test number K (1-3, in the order above)")
    args = ap.parse_args()
    tests = [TESTS[args.only - 1]] if args.only else TESTS[:2] if args.quick else TESTS
    print(f"queue of {args.items:,} items; load {os.getloadavg()[0]:.2f}; {os.cpu_count()} cpus")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="backlog-chaos-") as tmp:
        for k, test in enumerate(tests):
            ok, secs, tail = run_one(test, args.items, Path(tmp) / f"t{k}")
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'}  {secs:7.1f} s  {test.split('::')[1]}")
            if not ok:
                print(tail)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
