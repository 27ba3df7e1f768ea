#!/usr/bin/env python3
"""Per-item harness overhead: an agent that does nothing (`true`), through the whole pipeline.

Peers, all measured in this run:

  bare spawn        a Python loop of subprocess.run(["true"]), --items times: the floor
                    any harness that starts one process per item pays
  pipeline          a real workspace (harness.cli.demo.make_repo, [run] tick 0.05,
                    heartbeat_interval 0.2, memory_floor_mb 0, max_consecutive_failures 0,
                    [agent] preset "shell"), --items items with command ["true"], run by
                    `python -m harness.cli --root R run --agents 1`: claim, worktree reset
                    (start_attempt), spawn, commit_attempt, record (complete + accept), the
                    log files and events. ms/item = steady state, (last attempt-end - first
                    attempt-end) / (items - 1), which leaves out start-up and the first
                    item's `git worktree add`; the wall time is printed too
  pipeline, reuse off  the same with HARNESS_GIT_REUSE=false: a git process per step
                    (status, checkout -b, update-ref), what the worker ran before reuse
  worker alone      the same items run by one `python -m harness.pool.worker` process with no
                    coordinator (SIGTERM once done/ holds them all): tells the worker
                    process's own cost from the coordinator's effect on it
  in-process        harness.pool.worker.Worker's claim/process loop run in this process (no
                    coordinator, no separate interpreter); its git processes and agent
                    run are timed one by one (see the breakdown below)
  worktree cycle    one `git worktree add --detach` + `git worktree remove --force` (raw
                    git, --cycles times): what a fresh worktree per item would cost instead
  GNU parallel      `parallel -j1 true ::: 1..N` (Debian's `parallel`), the peer the issue
                    names: per job = (wall of N jobs - wall of 1 job) / (N - 1), so its
                    Perl start-up is left out as the pipeline's is; its overhead = per job
                    - bare spawn. Also with --results DIR --joblog FILE (a file per job's
                    output, as the harness keeps per attempt). Skipped (and said) where
                    `parallel` is not installed (apt-get install parallel)

Each round runs bare / pipeline / reuse off / worker alone / in-process once (--items items
each), the order rotated from round to round; per round a peer's figure is the median item
(the pipelines' and worker-alone's from the event log, over windows of 10 items) and the mean;
tables give medians over rounds. Harness overhead = pipeline ms/item - bare spawn
ms/item. Targets (issue 15): <= 5 ms median, and under GNU parallel's overhead measured
in the same run.

Breakdown: the pipeline's event log splits each item into claim -> agent-start (argv,
ensure_worktree, start_attempt), agent-start -> attempt-end (the agent, commit_attempt,
complete, accept) and attempt-end -> next claim (heartbeat, claim, log dir). Then the
same work is run in this process (harness.pool.worker.Worker.process over a prepared
workspace, no coordinator) with every git process and runner.run timed, then under
cProfile; and each step is timed alone (start_attempt, commit_attempt, accept,
runner.run(["true"]), queue claim+complete, heartbeat, event append, one git process).

Run:  python3 bench/overhead.py            (default: 200 items, 4 rounds, 10 worktree cycles)
      python3 bench/overhead.py --quick    (smoke run: 30 items, 1 round, 3 cycles)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import Bench, events, load_avg, machine_line, med  # noqa: E402

from harness import config as config_mod  # noqa: E402
from harness.agents import runner  # noqa: E402
from harness.liveness import heartbeat  # noqa: E402
from harness.repo import gitenv, worktrees  # noqa: E402
from harness.repo.refstream import RefStream  # noqa: E402
from harness.repo.reuse import Reuse  # noqa: E402
from harness.queue.core import Queue  # noqa: E402
from harness.pool.worker import Worker  # noqa: E402

TARGET_MS = 5.0


def enqueue_true(ws, n: int, prefix: str = "t") -> None:
    q = Queue(ws.queue_dir)
    for i in range(n):
        q.enqueue({"id": f"{prefix}{i:05d}", "title": "noop", "command": ["true"]})


def bare_spawn(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["true"])
        out.append(time.perf_counter() - t0)
    return out


def gnu_parallel(n: int, logs: Path | None = None) -> float | None:
    """Seconds per job of `parallel -j1 true` over n jobs, start-up left out; None if absent.
    With ``logs``, each job's output is kept (--results) and a job log written (--joblog),
    the nearest GNU parallel comes to the harness's per-attempt files."""
    exe = shutil.which("parallel")
    if exe is None:
        return None

    def wall(jobs: int) -> float:
        keep = []
        if logs is not None:
            run_dir = Path(tempfile.mkdtemp(dir=logs))
            keep = ["--results", str(run_dir / "out"), "--joblog", str(run_dir / "joblog")]
        t0 = time.perf_counter()
        subprocess.run([exe, "--will-cite", "-j1", *keep, "true", ":::",
                        *map(str, range(jobs))],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0

    one = med(wall(1) for _ in range(3))
    return (wall(n) - one) / (n - 1)


def pipeline(bench: Bench, n: int, reuse: bool = True) -> dict:
    ws = bench.workspace("pipeline" if reuse else "pipeline-noreuse")
    enqueue_true(ws, n)
    t0 = time.perf_counter()
    os.environ["HARNESS_GIT_REUSE"] = "true" if reuse else "false"  # the pool inherits it
    try:
        proc = bench.start_coordinator(ws, "--agents", "1")
    finally:
        del os.environ["HARNESS_GIT_REUSE"]
    code = proc.wait(timeout=120 + n)
    wall = time.perf_counter() - t0
    evs = events(ws)
    ends = [e for e in evs if e["event"] == "attempt-end"]
    ok = [e for e in ends if e.get("reason") == "succeeded"]
    if code != 0 or len(ok) != n:
        raise RuntimeError(f"pipeline: exit {code}, {len(ok)}/{n} succeeded; see {ws.root}")
    claims = {(e["item"], e["attempt"]): e["ts"] for e in evs if e["event"] == "claim"}
    agent = {(e["item"], e["attempt"]): e["ts"] for e in evs if e["event"] == "agent-start"}
    end_ts = sorted(e["ts"] for e in ends)
    claim_ts = sorted(claims.values())
    k1 = [agent[k] - claims[k] for k in claims if k in agent]
    k2 = [e["ts"] - agent[(e["item"], e["attempt"])] for e in ends]
    k3 = [c - e for e, c in zip(end_ts, claim_ts[1:])]
    bench.kill_workspace(ws)
    w = min(10, n - 1)  # cycles over 10 items: 0.1 ms resolution from 1 ms event stamps
    rolling = [(end_ts[i + w] - end_ts[i]) / w for i in range(0, len(end_ts) - w)]
    return {"wall": wall, "steady": (end_ts[-1] - end_ts[0]) / (n - 1),
            "steady_med": med(rolling),
            "window": end_ts[-1] - claim_ts[0], "first_item": end_ts[0] - claim_ts[0],
            "claim_to_agent": med(k1[1:]), "agent_to_end": med(k2[1:]),
            "end_to_claim": med(k3)}


def worker_alone(bench: Bench, n: int) -> dict:
    """`python -m harness.pool.worker` on the workspace with no coordinator; SIGTERM when done."""
    import psutil

    ws = bench.workspace("alone", {"coordinator_gone_after": 3600})
    enqueue_true(ws, n, "a")
    proc = subprocess.Popen([sys.executable, "-m", "harness.pool.worker", "--root", str(ws.root),
                             "--id", "w1", "--generation", "alone"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        bench.extra_pids.append((proc.pid, psutil.Process(proc.pid).create_time()))
    except psutil.Error:
        pass
    deadline = time.monotonic() + 120 + n
    while len(os.listdir(ws.queue_dir / "done")) < n:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker alone: exit {proc.poll()}; see {ws.root}")
        time.sleep(0.05)
    proc.terminate()
    proc.wait(timeout=30)
    end_ts = sorted(e["ts"] for e in events(ws) if e["event"] == "attempt-end")
    w = min(10, n - 1)
    rolling = [(end_ts[i + w] - end_ts[i]) / w for i in range(0, len(end_ts) - w)]
    bench.kill_workspace(ws)
    return {"mean": (end_ts[-1] - end_ts[0]) / (n - 1), "med": med(rolling)}


def worktree_cycles(bench: Bench, n: int) -> tuple[list[float], list[float]]:
    ws = bench.workspace("wtcycle")
    raw, api = [], []
    path = ws.root / "worktrees" / "cycle"
    env = {**os.environ, **gitenv.IDENTITY}
    for i in range(n):
        t0 = time.perf_counter()
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(path), "main"],
                       cwd=ws.root, check=True, capture_output=True, env=env)
        subprocess.run(["git", "worktree", "remove", "--force", str(path)],
                       cwd=ws.root, check=True, capture_output=True, env=env)
        raw.append(time.perf_counter() - t0)
    for i in range(n):
        t0 = time.perf_counter()
        wt = worktrees.ensure_worktree(ws.root, path, "main")
        worktrees.remove_worktree(ws.root, wt)
        api.append(time.perf_counter() - t0)
    return raw, api


class GitTimer:
    """Wraps worktrees._git and runner.run: count and time every git process and the agent run."""

    def __init__(self) -> None:
        self.git: dict[str, list[float]] = defaultdict(list)
        self.agent: list[float] = []
        self.streamed: list[float] = []  # transactions on a long-lived update-ref --stdin
        self._git, self._run, self._apply = worktrees._git, runner.run, RefStream.apply

    def __enter__(self) -> GitTimer:
        real_git, real_run, real_apply = self._git, self._run, self._apply

        def apply(stream, command):
            t0 = time.perf_counter()
            try:
                return real_apply(stream, command)
            finally:
                self.streamed.append(time.perf_counter() - t0)

        def git(args, cwd, **kw):
            sub = next((a for a in args if not a.startswith("-") and "=" not in a), "?")
            t0 = time.perf_counter()
            try:
                return real_git(args, cwd, **kw)
            finally:
                self.git[sub].append(time.perf_counter() - t0)

        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return real_run(*a, **kw)
            finally:
                self.agent.append(time.perf_counter() - t0)

        worktrees._git, runner.run, RefStream.apply = git, run, apply
        return self

    def __exit__(self, *exc: object) -> None:
        worktrees._git, runner.run, RefStream.apply = self._git, self._run, self._apply


def worker_loop(ws, n_expected: int) -> list[float]:
    """The worker's claim/process loop in this process (Worker.run without signals/exit)."""
    cfg = config_mod.load(ws.config_file)
    w = Worker(ws, cfg, "w1", "inproc")
    w.beat(force=True, state="idle")
    done = 0
    cycles = []
    last = None
    while True:
        if w.coordinator_gone():
            break
        paused = ws.interrupt_reason()
        claim = None if paused else w.queue.claim(on_claim=w._record_claim)
        if claim is None:
            break
        w.process(claim)
        done += 1
        now = time.perf_counter()
        if last is not None:  # item 1 (git worktree add) left out, as in the pipeline figure
            cycles.append(now - last)
        last = now
    w.hb.remove()
    if w.reuse is not None:
        w.reuse.close()
    if done != n_expected:
        raise RuntimeError(f"in-process worker processed {done}/{n_expected} items")
    return cycles


def components(bench: Bench, reps: int) -> dict[str, list[float]]:
    ws = bench.workspace("parts")
    wt = worktrees.ensure_worktree(ws.root, ws.worktree("w1"), "main")
    worktrees.start_attempt(wt, "main", "harness-attempts/warm/1")
    out: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn):
        t0 = time.perf_counter()
        r = fn()
        out[name].append(time.perf_counter() - t0)
        return r

    q = Queue(ws.queue_dir)
    for i in range(reps):
        q.enqueue({"id": f"c{i:05d}", "title": "x", "command": ["true"]})
    hb = heartbeat.HeartbeatWriter(ws.heartbeat_file("w1"), ws.tmp_dir, worker="w1")
    logd = ws.root / "logs" / "parts"
    logd.mkdir(parents=True)
    env = runner.clean_env()
    memo = Reuse()
    for i in range(3):  # until git has found the tree clean once, long enough ago
        sha = worktrees.commit_attempt(wt, "noop", reuse=memo)
        time.sleep(0.05)
    for i in range(reps):  # as the worker runs them (a no-change item)
        timed("start_attempt, reuse", lambda: worktrees.start_attempt(
            wt, "main", f"harness-attempts/r{i:05d}/1", reuse=memo))
        timed("runner.run(['true']) (the worker's spawn)", lambda: runner.run(
            ["true"], cwd=wt, env=env, stdout=logd / "o", stderr=logd / "e",
            limits=runner.Limits(timeout=3600), poll=0.2, on_start=lambda p: p.create_time(),
            on_poll=lambda: None))
        sha = timed("commit_attempt, reuse, nothing changed",
                    lambda: worktrees.commit_attempt(wt, "noop", reuse=memo))
        timed("accept, reuse (a transaction on update-ref --stdin)",
              lambda: worktrees.accept(ws.root, f"harness/r{i:05d}", sha, reuse=memo))
    memo.close()
    for i in range(reps):  # the same without reuse: a git process each
        timed("start_attempt, no reuse (status, checkout -b)", lambda: worktrees.start_attempt(
            wt, "main", f"harness-attempts/c{i:05d}/1"))
        sha = timed("commit_attempt, no reuse, nothing changed (status)",
                    lambda: worktrees.commit_attempt(wt, "noop"))
        timed("accept, no reuse (update-ref)",
              lambda: worktrees.accept(ws.root, f"harness/c{i:05d}", sha))
        c = timed("queue claim (link, unlink, read+validate item)", lambda: q.claim())
        timed("queue complete (rename)", lambda: c.complete())
        timed("heartbeat beat (write tmp + rename)", lambda: hb.beat(state="x"))
        timed("event append (one O_APPEND write)", lambda: ws.log_event("bench", n=i))
        timed("one git process (git rev-parse HEAD)", lambda: subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=wt, capture_output=True))
        timed("create a file (O_EXCL, 200 bytes, close)", lambda: os.close(_created(
            logd / f"f{i}")))
        timed("mkdir", lambda: os.mkdir(logd / f"d{i}"))
    return out


def _created(path: Path) -> int:
    """What each of the item's files costs the file system here (the disk's inode
    allocation, not Python, dominates it on a disk that has just freed many inodes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"x" * 200)
    return fd


def profile(bench: Bench, n: int, top: int) -> str:
    ws = bench.workspace("profile", {"coordinator_gone_after": 3600})
    enqueue_true(ws, n, "p")
    prof = cProfile.Profile()
    prof.enable()
    worker_loop(ws, n)
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(r"harness/", top + 10)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    return "\n".join(ln for ln in lines if not ln.startswith(("   Ordered by", "   List reduced")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--items", type=int, default=None, help="items (default 200; quick 30)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of the five peers, order rotated (default 4; quick 1)")
    ap.add_argument("--cycles", type=int, default=None, help="worktree add+remove cycles (10)")
    ap.add_argument("--reps", type=int, default=None, help="reps per component (50; quick 10)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile section")
    ap.add_argument("--keep", action="store_true", help="keep the temp workspaces")
    args = ap.parse_args()
    n = args.items or (30 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 4)
    cycles = args.cycles or (3 if args.quick else 10)
    reps = args.reps or (10 if args.quick else 50)
    n_prof = max(20, n // 2)

    with Bench("bench-overhead-", keep=args.keep) as bench:
        print(machine_line(bench.tempdir("probe")))
        print(f"items {n}; agent command ['true'] (shell preset, no /bin/sh); repo ="
              " harness.cli.demo.make_repo (2 tracked files); "
              f"{rounds} round(s) of the five peers, order rotated\n", flush=True)
        gt = GitTimer()
        res = []
        for r in range(rounds):
            out: dict = {}

            def run_bare() -> None:
                bare = bare_spawn(n)
                out["bare"] = {"mean": sum(bare) / n, "med": med(bare)}

            def run_pipe() -> None:
                out["pipe"] = pipeline(bench, n)

            def run_noreuse() -> None:
                out["noreuse"] = pipeline(bench, n, reuse=False)

            def run_alone() -> None:
                out["alone"] = worker_alone(bench, n)

            def run_inproc() -> None:
                ws = bench.workspace("inproc", {"coordinator_gone_after": 3600})
                enqueue_true(ws, n, "i")
                with gt:
                    cyc = worker_loop(ws, n)
                out["inproc"] = {"mean": sum(cyc) / len(cyc), "med": med(cyc)}

            steps = [run_bare, run_pipe, run_noreuse, run_alone, run_inproc]
            for step in steps[r % 5:] + steps[:r % 5]:  # rotate the order over rounds
                step()
            res.append(out)
            print(f"  round {r + 1}/{rounds}, ms/item mean (median): bare"
                  f" {out['bare']['mean'] * 1000:5.2f} ({out['bare']['med'] * 1000:5.2f}),"
                  f" pipeline {out['pipe']['steady'] * 1000:6.2f}"
                  f" ({out['pipe']['steady_med'] * 1000:6.2f}), reuse off"
                  f" {out['noreuse']['steady'] * 1000:6.2f}"
                  f" ({out['noreuse']['steady_med'] * 1000:6.2f}), worker alone"
                  f" {out['alone']['mean'] * 1000:6.2f} ({out['alone']['med'] * 1000:6.2f}),"
                  f" in-process {out['inproc']['mean'] * 1000:6.2f}"
                  f" ({out['inproc']['med'] * 1000:6.2f}); load {load_avg()}", flush=True)
        raw, api = worktree_cycles(bench, cycles)
        par = [gnu_parallel(n) for _ in range(rounds)]
        par_logs = [gnu_parallel(n, bench.tempdir("parallel-results")) for _ in range(rounds)]
        parts = components(bench, reps)
        prof = None if args.no_profile else profile(bench, n_prof, 25)

    def m(key: str, sub: str) -> float:
        return med(x[key][sub] for x in res) * 1000

    wall = med(x["pipe"]["wall"] for x in res)
    print(f"\nmedians over {rounds} round(s); 'median' = the median item of a round (robust to"
          " load bursts from other sessions), 'mean' = total time / items")
    print(f"{'peer':<50} {'median':>8} {'mean':>8}   ms/item")
    rows = [('bare spawn: subprocess.run(["true"])', m("bare", "med"), m("bare", "mean")),
            ("pipeline: coordinator + 1 worker, steady state", m("pipe", "steady_med"),
             m("pipe", "steady")),
            ("pipeline with [git] reuse = false (git per step)", m("noreuse", "steady_med"),
             m("noreuse", "steady")),
            ("worker process alone (no coordinator)", m("alone", "med"), m("alone", "mean")),
            ("in-process Worker.process loop (no coordinator)", m("inproc", "med"),
             m("inproc", "mean"))]
    for label, a, b in rows:
        print(f"{label:<50} {a:>8.2f} {b:>8.2f}")
    print(f"{'pipeline, first item (incl. git worktree add)':<50} {m('pipe', 'first_item'):>8.2f}")
    print(f"{'pipeline wall / items (start-up and shutdown in)':<50} {'':>8}"
          f" {wall / n * 1000:>8.2f}   ({wall:.2f}s for {n} items)")
    print(f"{'git worktree add + remove (raw git), per cycle':<50} {med(raw) * 1000:>8.2f}"
          f" {sum(raw) / len(raw) * 1000:>8.2f}   (ensure_worktree + remove_worktree: median"
          f" {med(api) * 1000:.2f})")
    if par[0] is None:
        print(f"{'GNU parallel -j1 true, per job':<50} (not installed: apt-get install parallel)")
    else:
        print(f"{'GNU parallel -j1 true, per job (start-up out)':<50} {med(par) * 1000:>8.2f}")
        print(f"{'  the same with --results and --joblog':<50} {med(par_logs) * 1000:>8.2f}")
    over = m("pipe", "steady_med") - m("bare", "med")
    over_mean = m("pipe", "steady") - m("bare", "mean")
    print(f"\nharness overhead = pipeline - bare spawn: median {over:.2f} ms/item, mean"
          f" {over_mean:.2f} ms/item; target <= {TARGET_MS:g} ms:"
          f" {'PASS' if over <= TARGET_MS else 'FAIL'} (median),"
          f" {'PASS' if over_mean <= TARGET_MS else 'FAIL'} (mean)")
    off = m("noreuse", "steady_med") - m("bare", "med")
    print(f"with [git] reuse = false: {off:.2f} ms/item; reuse on / off = {over / off:.2f}x")
    if par[0] is not None:
        par_over = med(par) * 1000 - m("bare", "med")
        print(f"GNU parallel's overhead = per job - bare spawn: {par_over:.2f} ms/job; harness"
              f" / GNU parallel = {over / par_over:.2f}x; target < 1.0x:"
              f" {'PASS' if over < par_over else 'FAIL'}")
        logs_over = med(par_logs) * 1000 - m("bare", "med")
        print(f"GNU parallel keeping each job's output (--results, --joblog): {logs_over:.2f}"
              f" ms/job; harness / that = {over / logs_over:.2f}x")
    print(f"(in-process loop - bare spawn: median {m('inproc', 'med') - m('bare', 'med'):.2f}"
          f" ms/item; a fresh worktree per item would add ~{med(raw) * 1000:.0f} ms of git"
          " worktree add+remove alone: the harness reuses one worktree per worker)")

    print("\npipeline per item, from the event log (medians, ms; event ts have 1 ms resolution):")
    print(f"  claim -> agent-start       {m('pipe', 'claim_to_agent'):6.1f}"
          "   argv, ensure_worktree, start_attempt, heartbeats, spawn")
    print(f"  agent-start -> attempt-end {m('pipe', 'agent_to_end'):6.1f}"
          "   agent runs + reaped, commit_attempt, complete, accept, metrics/result files")
    print(f"  attempt-end -> next claim  {m('pipe', 'end_to_claim'):6.1f}"
          "   heartbeat, claim (link/unlink, item read), log dir, item.json")

    total = n * rounds
    total_git = sum(sum(v) for v in gt.git.values())
    print(f"\nin-process loop ({rounds} x {n} items): time per item by what ran (ms/item):")
    for sub, ts in sorted(gt.git.items(), key=lambda kv: -sum(kv[1])):
        print(f"  git {sub:<22} {len(ts) / total:4.1f} procs/item  {sum(ts) / total * 1000:7.2f}"
              f"  (median {med(ts) * 1000:.2f} per process)")
    agent_ms = sum(gt.agent) / total * 1000
    loop_ms = sum(x["inproc"]["mean"] for x in res) / rounds * 1000
    print(f"  {'all git':<26} {sum(len(v) for v in gt.git.values()) / total:4.1f} procs/item"
          f"  {total_git / total * 1000:7.2f}")
    stream_ms = sum(gt.streamed) / total * 1000
    print(f"  {'update-ref --stdin (stream)':<26} {len(gt.streamed) / total:4.1f} txns/item"
          f"   {stream_ms:7.2f}  (no process: one long-lived git per worker)")
    print(f"  {'runner.run([true])':<26} {'':>15}  {agent_ms:7.2f}")
    print(f"  {'everything else (python)':<26} {'':>15}"
          f"  {loop_ms - total_git / total * 1000 - agent_ms - stream_ms:7.2f}"
          f"   (of a mean loop time of {loop_ms:.2f})")

    print(f"\neach step alone ({reps} reps, median ms):")
    for name, ts in parts.items():
        print(f"  {name:<52} {med(ts) * 1000:7.2f}")
    if prof:
        print(f"\ncProfile of the in-process worker loop ({n_prof} items):")
        print(prof)
    print(f"\nload average at end {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
