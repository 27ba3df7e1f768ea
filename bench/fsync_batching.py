#!/usr/bin/env python3
"""Would batching the durable claim's directory fsyncs by hand beat the kernel?

A durable claim is rename(pending/x, claimed/x) plus an fsync of claimed/. With several
claimants, one fsync that starts after a claimant's rename also makes that rename durable,
so a claimant could skip its own. Two bare loops, 8 processes (and 1) on a fresh
directory of --items empty files:

  each    every claimant fsyncs claimed/ after its rename (what the harness does)
  group   a leader under flock fsyncs for everyone: a claimant reads the count of fsyncs
          started, takes the lock, and fsyncs only if no fsync that began after its read
          has finished meanwhile (counts kept in a small file under the lock)

Printed: claims/s and the number of fsyncs each made. Every item is claimed exactly once
(checked).

Run:  python3 bench/fsync_batching.py [--items 20000]
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import os
import shutil
import struct
import tempfile
import time

COUNTS = struct.Struct("QQ")  # fsyncs started, the last one finished


def claimant(root: str, mode: str, names: list[str], out: mp.Queue) -> None:
    claimed = os.open(f"{root}/claimed", os.O_RDONLY | os.O_DIRECTORY)
    lock = os.open(f"{root}/.fsyncs", os.O_RDWR)
    got, fsyncs = [], 0
    for name in names:
        try:
            os.rename(f"{root}/pending/{name}", f"{root}/claimed/{name}")
        except FileNotFoundError:
            continue
        got.append(name)
        if mode == "each":
            os.fsync(claimed)
            fsyncs += 1
            continue
        seen, _ = COUNTS.unpack(os.pread(lock, COUNTS.size, 0))  # read after the rename
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            started, finished = COUNTS.unpack(os.pread(lock, COUNTS.size, 0))
            if finished <= seen:  # no fsync that began after our rename has finished
                started += 1
                os.pwrite(lock, COUNTS.pack(started, finished), 0)
                os.fsync(claimed)
                fsyncs += 1
                os.pwrite(lock, COUNTS.pack(started, started), 0)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    out.put((got, fsyncs))


def run(mode: str, procs: int, items: int) -> tuple[float, int]:
    root = tempfile.mkdtemp(prefix="fsync-batching-")
    try:
        for d in ("pending", "claimed"):
            os.mkdir(f"{root}/{d}")
        for i in range(items):
            os.close(os.open(f"{root}/pending/{i:08d}", os.O_CREAT | os.O_WRONLY, 0o600))
        with open(f"{root}/.fsyncs", "wb") as f:
            f.write(COUNTS.pack(0, 0))
        os.sync()
        names = sorted(os.listdir(f"{root}/pending"))
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        workers = [ctx.Process(target=claimant, args=(root, mode, names, out))
                   for _ in range(procs)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        results = [out.get(timeout=600) for _ in workers]
        for w in workers:
            w.join(timeout=60)
        seconds = time.perf_counter() - t0
        claimed = [n for got, _ in results for n in got]
        if sorted(claimed) != names:
            raise SystemExit(f"{mode}: {len(claimed)} claims for {len(names)} items")
        return items / seconds, sum(f for _, f in results)
    finally:
        shutil.rmtree(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20000)
    args = ap.parse_args()
    for procs in (1, 8):
        for mode in ("each", "group"):
            rate, fsyncs = run(mode, procs, args.items)
            print(f"{procs} procs  {mode:5s}  {rate:8.0f} claims/s  {fsyncs:6d} fsyncs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
