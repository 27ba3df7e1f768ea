#!/usr/bin/env python3
"""Recovery latency: a worker dies (SIGKILL) or freezes (SIGSTOP) while it holds an item.

SIGKILL case. A workspace (harness.cli.demo.make_repo; [run] tick 0.05, heartbeat_interval
0.2, stale_after --stale-after-kill (default 30: death must not wait for it),
max_attempts 100, memory_floor_mb 0, max_consecutive_failures 0; shell preset) with one
item whose command is "sleep 600", and `python -m harness.cli --root R run --agents 2`.
Each repetition waits until the item is claimed and its agent runs, and until the
holder has lived longer than harness.pool.slots.QUICK_DEATH (a worker that dies
younger counts as crash-looping and is restarted after a back-off: that is policy,
not detection latency), then SIGKILLs the holder (pid from state/heartbeats/<w>.json)
and polls the disk every ~1 ms for

  (a) back in queue: the item's name at the next attempt in pending/ or claimed/
      (the other, idle worker claims it within its 0.1 s idle poll, so the pending
      name may be gone before a poll sees it) and, separately, claimed again;
  (b) replacement: a heartbeat for the dead worker's slot with a new generation
      (the coordinator's spawn + interpreter start-up + imports + first beat);
  (c) the dead worker's agent (its own process group, "sleep 600") gone.

Death is detected through the worker's flock / the reaped child, so (a) should be a
tick or two (plus the revoke's own work), independent of stale_after.

SIGSTOP case. The same with stale_after = --stale-after (default 2 s) and
stale_kill_grace 1 s: the holder is SIGSTOPped; its heartbeat counter stops; the
coordinator revokes after stale_after on its own clock. Measured: time from SIGSTOP
until the item is back in queue (compared with stale_after + tick), and until the
stopped worker is gone (the coordinator TERMs it, then KILLs it after
stale_kill_grace) and replaced.

The coordinator's own event log (revoke, worker-spawn) is printed beside the polled
figures as a cross-check (its timestamps have 1 ms resolution).

Run:  python3 bench/recovery.py            (default: 10 SIGKILL reps, 5 SIGSTOP reps; ~3 min)
      python3 bench/recovery.py --quick    (smoke run: 2 + 1 reps)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import Bench, events, load_avg, machine_line, med, wait_for  # noqa: E402

import psutil  # noqa: E402

from harness.liveness import heartbeat  # noqa: E402
from harness.queue import names  # noqa: E402
from harness.pool.slots import QUICK_DEATH  # noqa: E402
from harness.queue.core import Queue  # noqa: E402

TICK = 0.05
ITEM = "long"


def item_at(ws, states: tuple[str, ...]) -> dict[str, int]:
    """{state: attempt} of the item in each of ``states`` where it is."""
    out = {}
    for state in states:
        for entry in os.listdir(ws.queue_dir / state):
            n = names.try_parse(entry)
            if n is not None and n.id == ITEM:
                out[state] = n.attempt
    return out


def holder(ws) -> tuple[str, dict] | None:
    """(worker, heartbeat) of the worker whose heartbeat names the item and whose agent runs."""
    claimed = item_at(ws, ("claimed",)).get("claimed")
    if claimed is None:
        return None
    for w, hb in heartbeat.read_all(ws.heartbeats_dir).items():
        if hb.get("item_id") == ITEM and hb.get("attempt") == claimed and hb.get("agent_pid"):
            return w, hb
    return None


def alive(pid: int, start: float | None = None) -> bool:
    try:
        p = psutil.Process(pid)
        if start is not None and abs(p.create_time() - start) > 0.01:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def setup(bench: Bench, tag: str, run: dict) -> tuple:
    ws = bench.workspace(tag, {"max_attempts": 100, **run})
    Queue(ws.queue_dir).enqueue({"id": ITEM, "title": "sleeps 600 s", "command": "sleep 600"})
    proc = bench.start_coordinator(ws, "--agents", "2")
    return ws, proc


def wait_victim(ws, min_age: float, timeout: float = 60.0) -> tuple[str, dict, int]:
    got = wait_for(lambda: holder(ws), timeout, "the item to be claimed and its agent to run")
    w, hb = got
    age = time.time() - float(hb["start_time"])
    if age < min_age:
        time.sleep(min_age - age)
        got = wait_for(lambda: holder(ws), timeout, "the holder")
        w, hb = got
    return w, hb, int(hb["attempt"])


def measure(ws, proc, w: str, hb: dict, attempt: int, sig: int, timeout: float) -> dict:
    """Send ``sig`` to the holder and poll until it is recovered; latencies in seconds."""
    pid, gen = int(hb["pid"]), hb["generation"]
    agent_pid, agent_start = int(hb["agent_pid"]), hb.get("agent_start")
    hb_file = ws.heartbeat_file(w)
    wall0 = time.time()
    t0 = time.perf_counter()
    os.kill(pid, sig)
    got: dict[str, float] = {}
    while time.perf_counter() - t0 < timeout:
        now = time.perf_counter() - t0
        where = item_at(ws, ("pending", "claimed"))
        if "back" not in got and any(a > attempt for a in where.values()):
            got["back"] = now
        if "reclaimed" not in got and where.get("claimed", 0) > attempt:
            got["reclaimed"] = now
        if "agent_gone" not in got and not alive(agent_pid, agent_start):
            got["agent_gone"] = now
        if "worker_gone" not in got and not alive(pid, float(hb["start_time"])):
            got["worker_gone"] = now
        if "replacement" not in got:
            new = heartbeat.read(hb_file)
            if new is not None and new.get("generation") != gen:
                got["replacement"] = now
        if len(got) == 5:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"the coordinator exited ({proc.returncode}); see {ws.root}")
        time.sleep(0.001)
    evs = events(ws)
    rev = [e["ts"] - wall0 for e in evs if e["event"] == "revoke" and e["ts"] >= wall0 - 0.002]
    spawn = [e["ts"] - wall0 for e in evs if e["event"] == "worker-spawn"
             and e.get("worker") == w and e["ts"] >= wall0 - 0.002]
    got["ev_revoke"] = min(rev) if rev else float("nan")
    got["ev_spawn"] = min(spawn) if spawn else float("nan")
    got["victim"] = w  # type: ignore[assignment]
    return got


def table(rows: list[dict], cols: list[tuple[str, str]]) -> None:
    print(f"{'rep':>3} {'worker':>6} " + " ".join(f"{h:>12}" for _, h in cols))
    for i, r in enumerate(rows, 1):
        print(f"{i:>3} {r['victim']:>6} " + " ".join(
            f"{r.get(k, float('nan')) * 1000:>12.1f}" for k, _ in cols))
    print(f"{'min':>10} " + " ".join(
        f"{min(r.get(k, float('inf')) for r in rows) * 1000:>12.1f}" for k, _ in cols))
    print(f"{'median':>10} " + " ".join(
        f"{med(r.get(k, float('nan')) for r in rows) * 1000:>12.1f}" for k, _ in cols))
    print(f"{'max':>10} " + " ".join(
        f"{max(r.get(k, float('-inf')) for r in rows) * 1000:>12.1f}" for k, _ in cols))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--kill-reps", type=int, default=None, help="SIGKILL repetitions (10)")
    ap.add_argument("--stop-reps", type=int, default=None, help="SIGSTOP repetitions (5)")
    ap.add_argument("--stale-after-kill", type=float, default=30.0,
                    help="stale_after in the SIGKILL session (default 30)")
    ap.add_argument("--stale-after", type=float, default=2.0,
                    help="stale_after in the SIGSTOP session (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp workspaces")
    args = ap.parse_args()
    kill_reps = args.kill_reps or (2 if args.quick else 10)
    stop_reps = args.stop_reps or (1 if args.quick else 5)
    min_age = QUICK_DEATH + 0.5

    with Bench("bench-recovery-", keep=args.keep) as bench:
        print(machine_line(bench.tempdir("probe")))
        print(f"[run] tick {TICK}, heartbeat_interval 0.2; 2 workers; item command 'sleep 600';"
              f" victims are at least {min_age:g}s old (QUICK_DEATH {QUICK_DEATH:g}s)\n",
              flush=True)

        # -- SIGKILL ------------------------------------------------------------
        ws, proc = setup(bench, "kill", {"stale_after": args.stale_after_kill})
        kills = []
        for rep in range(kill_reps):
            w, hb, attempt = wait_victim(ws, min_age)
            r = measure(ws, proc, w, hb, attempt, signal.SIGKILL, timeout=30)
            kills.append(r)
            print(f"  SIGKILL {rep + 1}/{kill_reps}: {w} attempt {attempt}: back in queue"
                  f" {r.get('back', float('nan')) * 1000:.1f} ms, replacement heartbeat"
                  f" {r.get('replacement', float('nan')) * 1000:.0f} ms; load {load_avg()}",
                  flush=True)
        bench.stop_coordinator(proc)
        bench.kill_workspace(ws)

        # -- SIGSTOP ------------------------------------------------------------
        ws, proc = setup(bench, "stop", {"stale_after": args.stale_after,
                                         "stale_kill_grace": 1.0})
        stops = []
        for rep in range(stop_reps):
            w, hb, attempt = wait_victim(ws, min_age)
            r = measure(ws, proc, w, hb, attempt, signal.SIGSTOP,
                        timeout=args.stale_after + 30)
            stops.append(r)
            print(f"  SIGSTOP {rep + 1}/{stop_reps}: {w} attempt {attempt}: back in queue"
                  f" {r.get('back', float('nan')) * 1000:.0f} ms, stopped worker gone"
                  f" {r.get('worker_gone', float('nan')) * 1000:.0f} ms; load {load_avg()}",
                  flush=True)
        bench.stop_coordinator(proc)
        bench.kill_workspace(ws)

    print(f"\nSIGKILL of the holder ({kill_reps} reps; stale_after {args.stale_after_kill:g}s,"
          f" tick {TICK}s); milliseconds after the kill:")
    table(kills, [("back", "(a) in queue"), ("reclaimed", "claimed again"),
                  ("ev_revoke", "revoke event"), ("ev_spawn", "spawn event"),
                  ("replacement", "(b) new hb"), ("agent_gone", "(c) agent gone")])
    print(f"\nSIGSTOP of the holder ({stop_reps} reps; stale_after {args.stale_after:g}s,"
          f" stale_kill_grace 1s, tick {TICK}s, heartbeat_interval 0.2s); milliseconds after"
          " the stop:")
    table(stops, [("back", "in queue"), ("reclaimed", "claimed again"),
                  ("ev_revoke", "revoke event"), ("agent_gone", "agent gone"),
                  ("worker_gone", "worker gone"), ("replacement", "new hb")])
    ref = (args.stale_after + TICK) * 1000
    print(f"reference: stale_after + tick = {ref:.0f} ms; the counter last changed up to one"
          " heartbeat_interval (200 ms) before the stop, so the expected range is about"
          f" {(args.stale_after - 0.2) * 1000:.0f}..{ref:.0f} ms plus the tick's own work")
    print(f"\nload average at end {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
