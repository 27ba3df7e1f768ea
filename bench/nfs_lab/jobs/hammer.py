#!/usr/bin/env python3
"""Cross-host claim hammer on the harness's own Queue (runs inside a UML guest = one host).
Adapted from shared/nfs-lab/lab/jobs/hammer.py (only its `harness` pattern is kept).

  hammer.py setup  ROOT N OUTJSON                 enqueue N items with Queue.enqueue (4 procs)
  hammer.py claim  ROOT K START_AT OUTDIR         K claimer processes on this host: Queue.claim()
                                                  (rename pending/N -> claimed/N), then
                                                  Claim.complete() (rename -> done/N), until
                                                  claim() finds nothing 3 times in a row
  hammer.py verify ROOT N OUTJSON                 list the directories + invariants.check

Every claimer writes OUTDIR/<host>-<k>.json (the names it claimed and completed, errors);
the driver (bench/nfs_lab.py) takes the union over both hosts.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, os.environ["REPO"])

from harness.queue import Fenced, Queue  # noqa: E402


def item_doc(i: int) -> dict:
    return {"id": f"h{i:05d}", "title": f"hammer item {i}", "prompt": "hammer"}


def setup(root: str, n: int, out: str, procs: int = 4) -> None:
    """Enqueue from ``procs`` processes at once (one enqueue is ~0.15 s in the lab)."""
    t0 = time.time()
    Queue(Path(root))
    pids = []
    for p in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                q = Queue(Path(root))
                for i in range(p, n, procs):
                    q.enqueue(item_doc(i))
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    dt = time.time() - t0
    Path(out).write_text(json.dumps({"n": n, "seconds": dt, "host": socket.gethostname()}))


def claimer(root: str, start_at: float, out: str) -> None:
    rec: dict = {"host": socket.gethostname(), "pid": os.getpid(), "claims": [], "completed": [],
                 "errors": {}}
    q = Queue(Path(root))
    while time.time() < start_at:
        time.sleep(0.002)
    rec["t_start"] = rec["t_last"] = time.time()
    empty = 0
    while empty < 3:
        try:
            c = q.claim()
        except OSError as exc:
            rec["errors"][f"claim-{exc.errno}"] = rec["errors"].get(f"claim-{exc.errno}", 0) + 1
            continue
        if c is None:
            empty += 1
            time.sleep(0.3)
            continue
        empty = 0
        rec["claims"].append(str(c.name))
        try:
            c.complete()
            rec["completed"].append(str(c.name))
        except Fenced:
            rec["errors"]["complete-fenced"] = rec["errors"].get("complete-fenced", 0) + 1
        rec["t_last"] = time.time()
    Path(out).write_text(json.dumps(rec))


def claim(root: str, k: int, start_at: float, outdir: str) -> None:
    os.makedirs(outdir, exist_ok=True)
    host = socket.gethostname()
    pids = []
    for i in range(k):
        pid = os.fork()
        if pid == 0:
            try:
                claimer(root, start_at, f"{outdir}/{host}-{i}.json")
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def verify(root: str, n: int, out: str) -> None:
    from harness.queue.invariants import check

    r = Path(root)
    res: dict = {s: sorted(x for x in os.listdir(r / s) if not x.startswith("."))
                 for s in ("pending", "claimed", "waiting", "done", "failed")}
    res["violations"] = [str(v) for v in check(r, enqueued=[item_doc(i)["id"] for i in range(n)],
                                               expect_finished=True)]
    Path(out).write_text(json.dumps(res))


if __name__ == "__main__":
    cmd, *a = sys.argv[1:]
    if cmd == "setup":
        setup(a[0], int(a[1]), a[2])
    elif cmd == "claim":
        claim(a[0], int(a[1]), float(a[2]), a[3])
    elif cmd == "verify":
        verify(a[0], int(a[1]), a[2])
