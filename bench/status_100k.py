#!/usr/bin/env python3
"""`parallel-harness status` on a queue of 100,000 items, end to end (interpreter start-up in).

Builds a workspace whose queue holds --items items (default 100,000) in the exact on-disk
layout harness.queue.Queue.enqueue leaves: the item document in ids/<id>, hard-linked as
<state>/<name> with names from harness.queue.names.ItemName (written directly with
os.open/os.link instead of Queue.enqueue, which validates every item with pydantic).
The mix: 70% pending, 25% done, 3% waiting (a retry due in an hour), ~2% failed (with a
.reason sidecar), 8 claimed; 8 heartbeats naming the claimed items (their slot locks
held by this process, so they show as alive), a coordinator.json whose lock this
process holds, and a run.json, so status takes every path it has.

Timed with time.perf_counter around subprocess.run, --runs times each (min and median):

  python -c pass                               the interpreter floor (site, .pth files)
  python -c "import harness.cli.main"               the CLI's imports, no command run
  python -m harness.cli --root R status        what the target is about
  python -m harness.cli --root R status --json
  <venv bin>/parallel-harness --root R status  the console script (not the pyenv shim)

plus status.collect() in this process (the directory listings alone) and
`python -X importtime -c "import harness.cli.main; import harness.views.status"` summarised (the
imports `status` pays for, costliest first).
Target: status (text and --json) at most 0.3 s, median (1.5 s from 1,000,000 items on,
issue 15; --target overrides).

Run:  python3 bench/status_100k.py            (default: 100,000 items, 10 runs each)
      python3 bench/status_100k.py --quick    (smoke run: 10,000 items, 3 runs)
      python3 bench/status_100k.py --items 1000000 --runs 5 --before REV   (issue 15's
                                                   size, and status --json of commit REV)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import REPO_ROOT, Bench, load_avg, machine_line, med  # noqa: E402

import orjson  # noqa: E402

from harness.liveness import heartbeat  # noqa: E402
from harness.liveness.process import ProcessIdentity, hold_lock  # noqa: E402
from harness.queue.names import DEP, ItemName  # noqa: E402
from harness.queue.core import Queue  # noqa: E402
from harness.workspace import Workspace  # noqa: E402

TARGET_S = 0.3  # at 100,000 items; issue 15: 1.5 s at 1,000,000 (--target)
CLAIMED = 8


def generate(ws: Workspace, total: int) -> dict[str, int]:
    """Write ``total`` items in Queue's layout; return the count per state."""
    Queue(ws.queue_dir)  # creates tmp/, ids/ and the state directories
    q = ws.queue_dir
    ids = str(q / "ids")
    n_done, n_wait = total * 25 // 100, total * 3 // 100
    n_failed = total * 2 // 100 - CLAIMED
    n_pending = total - n_done - n_wait - n_failed - CLAIMED
    plan = (["claimed"] * CLAIMED + ["failed"] * n_failed + ["waiting"] * n_wait
            + ["done"] * n_done + ["pending"] * n_pending)
    now = time.time()
    order0 = time.time_ns() - total * 1000
    due = int((now + 3600) * 1000)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    claimed_names = []
    for i, state in enumerate(plan):
        item_id = f"item-{i:06d}"
        doc = orjson.dumps({"command": "make test", "enqueued_at": now, "id": item_id,
                            "priority": 5, "title": f"benchmark item {i}", "type": "task"},
                           option=orjson.OPT_SORT_KEYS)
        path = f"{ids}/{item_id}"
        fd = os.open(path, flags, 0o644)
        os.write(fd, doc)
        os.close(fd)
        prio = 2 if i % 10 == 0 else 5
        attempt = 2 if state in ("waiting", "failed") else 1
        name = ItemName(prio, f"{order0 + i * 1000:016x}", item_id, attempt,
                        due if state == "waiting" else None)
        if state == "waiting" and i % 2:
            name = ItemName(prio, name.order, item_id, 1, DEP)
        os.link(path, q / state / str(name))
        if state == "failed":
            (q / "failed" / (str(name) + ".reason")).write_text(
                f"failed: agent exited with status 1 (item {i})\n")
        if state == "claimed":
            claimed_names.append(name)
    ws.make_dirs()
    me = ProcessIdentity.of().as_record()
    for k, name in enumerate(claimed_names, 1):
        w = f"w{k}"
        heartbeat.HeartbeatWriter(
            ws.heartbeat_file(w), ws.tmp_dir, worker=w, generation=f"{k:08x}", **me,
            state="working", item=str(name), item_id=name.id, attempt=name.attempt,
            claimed_at=now, doing="Bash: make test", agent_pid=os.getpid(), agent_start=None,
            tokens=12345, cost_usd=0.12, turns=7, last_tool="Bash").beat()
    heartbeat.HeartbeatWriter(ws.coordinator_file, ws.tmp_dir, **me,
                              started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")).beat()
    ws.run_file.write_bytes(orjson.dumps({
        "started_at": now, "throughput_per_min": 12.5, "eta_s": 3600,
        "tokens_total": {"input": 1, "output": 2, "cache_creation": 3, "cache_read": 4},
        "cost_usd_total": 1.5, "attempts": {"succeeded": n_done}, "reclaims_total": 0,
        "restarts_total": 0}))
    return {"pending": n_pending, "claimed": CLAIMED, "waiting": n_wait, "done": n_done,
            "failed": n_failed}


def timed_runs(argv: list[str], runs: int, expect: bytes | None, env: dict[str, str],
               cwd: Path = REPO_ROOT) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, cwd=str(cwd), env=env)
        out.append(time.perf_counter() - t0)
        if p.returncode != 0 or (expect is not None and expect not in p.stdout):
            raise RuntimeError(f"{argv}: exit {p.returncode}\n{p.stdout[-500:]!r}\n"
                               f"{p.stderr[-2000:].decode(errors='replace')}")
    return out


def importtime(env: dict[str, str]) -> tuple[list[tuple[int, int, int, str]], int]:
    """Rows (depth, self us, cumulative us, module) of depth <= 1, in order; total self us."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        "import harness.cli.main; import harness.views.status"],
                       capture_output=True, text=True, cwd=str(REPO_ROOT), env=env)
    rows, total = [], 0
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        total += int(self_us)
        if depth <= 1:
            rows.append((depth, int(self_us), int(cum_us), name.strip()))
    return rows, total


def export(rev: str, into: Path) -> Path:
    """The ``harness`` package of commit ``rev``, unpacked into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "harness"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def modes(tmp: Path) -> list[tuple[str, dict[str, str]]]:
    """The environment as it is, and one where bytecode is cached (in a temp prefix)."""
    env = dict(os.environ)
    out = []
    if env.get("PYTHONDONTWRITEBYTECODE"):
        out.append(("as set up here: PYTHONDONTWRITEBYTECODE=1, harness/*.py compiled every"
                    " run", env))
    else:
        out.append(("as set up here", env))
    cached = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(tmp)
    out.append((f"bytecode cached (PYTHONPYCACHEPREFIX={tmp}, written by a warm-up run)",
                cached))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--items", type=int, default=None, help="items (default 100000; quick 10000)")
    ap.add_argument("--runs", type=int, default=None, help="runs per command (10; quick 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temp workspace")
    ap.add_argument("--before", default=None, metavar="REV",
                    help="also time `status --json` of commit REV's harness/ (git archive)")
    ap.add_argument("--target", type=float, default=None,
                    help=f"seconds (default {TARGET_S}; 1.5 from 1,000,000 items on)")
    args = ap.parse_args()
    total = args.items or (10_000 if args.quick else 100_000)
    runs = args.runs or (3 if args.quick else 10)
    target = args.target or (1.5 if total >= 1_000_000 else TARGET_S)

    with Bench("bench-status-", keep=args.keep) as bench:
        root = bench.tempdir("ws") / "ws"
        root.mkdir()
        print(machine_line(root))
        ws = Workspace.at(root)
        t0 = time.perf_counter()
        counts = generate(ws, total)
        gen = time.perf_counter() - t0
        locks = [hold_lock(ws.worker_lock(f"w{k}")) for k in range(1, CLAIMED + 1)]
        locks.append(hold_lock(ws.coordinator_lock))
        print(f"generated {total:,} items in {gen:.1f}s ({gen / total * 1e6:.0f} us/item):"
              f" {', '.join(f'{k} {v:,}' for k, v in counts.items())}; {CLAIMED} heartbeats;"
              f" {runs} runs per command\n", flush=True)

        from harness.cli.render import render_text
        from harness.views.status import collect

        coll = []
        for _ in range(runs):
            t = time.perf_counter()
            snap = collect(ws)
            render_text(snap)
            coll.append(time.perf_counter() - t)
        assert snap["counts"] == counts, (snap["counts"], counts)
        listing = []
        for _ in range(runs):
            t = time.perf_counter()
            for state in counts:
                os.listdir(ws.queue_dir / state)
            listing.append(time.perf_counter() - t)

        py = sys.executable
        script = Path(sys.executable).parent / "parallel-harness"
        expect = f"pending {counts['pending']}".encode()
        cases = [
            ("python -c pass (interpreter floor)", [py, "-c", "pass"], None),
            ("python -c 'import harness.cli.main'", [py, "-c", "import harness.cli.main"], None),
            ("python -m harness.cli status", [py, "-m", "harness.cli", "--root", str(root),
                                              "status"], expect),
            ("python -m harness.cli status --json", [py, "-m", "harness.cli", "--root",
                                                     str(root), "status", "--json"],
             f'"pending": {counts["pending"]}'.encode()),
        ]
        if script.exists():
            cases.append((f"{script.name} status (console script)",
                          [str(script), "--root", str(root), "status"], expect))
        cases = [(*case, REPO_ROOT) for case in cases]
        if args.before:  # `python -m` imports harness from its cwd: the exported tree
            cases.append((f"status --json of {args.before}", cases[3][1], cases[3][2],
                          export(args.before, bench.tempdir("before"))))
        results: list[tuple[str, list[tuple[str, list[float]]]]] = []
        imports = []
        for mode, env in modes(bench.tempdir("pycache")):
            print(f"  {mode}:", flush=True)
            for _, argv, exp, cwd in cases:  # warm the page cache (and write the .pyc files) once
                timed_runs(argv, 1, exp, env, cwd)
            rows = []
            for label, argv, exp, cwd in cases:
                ts = timed_runs(argv, runs, exp, env, cwd)
                rows.append((label, ts))
                print(f"    {label:<46} min {min(ts) * 1000:7.1f} ms  median"
                      f" {med(ts) * 1000:7.1f} ms", flush=True)
            results.append((mode, rows))
            imports.append((mode, *importtime(env)))
        for fd in locks:
            if fd is not None:
                os.close(fd)

    verdicts = []
    for mode, rows in results:
        print(f"\n{mode}")
        print(f"  {'command':<46} {'min ms':>8} {'median ms':>10} {'max ms':>8}")
        for label, ts in rows:
            print(f"  {label:<46} {min(ts) * 1000:>8.1f} {med(ts) * 1000:>10.1f}"
                  f" {max(ts) * 1000:>8.1f}")
        floor, imp, st = (med(rows[i][1]) for i in range(3))
        print(f"  split of the median `status`: interpreter {floor * 1000:.0f} ms + harness.cli"
              f" imports {(imp - floor) * 1000:.0f} ms + the command (listing {total:,} names,"
              f" heartbeats, output) {(st - imp) * 1000:.0f} ms")
        if args.before:
            now_s, then_s = med(rows[3][1]), med(rows[-1][1])
            print(f"  status --json, this tree / {args.before}: {now_s / then_s:.2f}x"
                  f" ({now_s * 1000:.0f} vs {then_s * 1000:.0f} ms, medians, same run)")
        for label, ts in rows[2:]:
            v = med(ts)
            verdicts.append(f"target <= {target}s, {label}, {mode.split(':')[0].split(' (')[0]}:"
                            f" median {v:.3f}s {'PASS' if v <= target else 'FAIL'}")
    print(f"\nin this process ({runs} runs):")
    print(f"  status.collect() + render_text()  min {min(coll) * 1000:6.1f} ms  median"
          f" {med(coll) * 1000:6.1f} ms")
    print(f"  os.listdir of the 5 state dirs    min {min(listing) * 1000:6.1f} ms  median"
          f" {med(listing) * 1000:6.1f} ms")
    for mode, rows, total_us in imports:
        print(f"\npython -X importtime -c 'import harness.cli.main; import harness.views.status' (what"
              f" `status` imports), {mode.split(':')[0].split(' (')[0]}:"
              f" {total_us / 1000:.1f} ms of imports in all (self times summed; importtime"
              " inflates them); depth 0 and 1, cumulative ms >= 0.5:")
        children: list[tuple[int, int, int, str]] = []
        for row in rows:  # importtime prints a module's imports before the module itself
            if row[0] == 1:
                children.append(row)
                continue
            for depth, self_us, cum, name in [row, *children]:
                if cum >= 500:
                    print(f"  {'  ' * depth}{name:<{46 - 2 * depth}} cum {cum / 1000:6.1f}"
                          f"  self {self_us / 1000:6.1f}")
            children = []
    print()
    for v in verdicts:
        print(v)
    print(f"load average at end {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
