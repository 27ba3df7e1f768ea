#!/usr/bin/env python3
"""Bulk enqueue from JSON Lines: the CLI against the raw create+link loop, same run.

A JSONL file of --items items (default 1,000,000; {"id", "title", "command",
"priority"} each) is enqueued into a fresh workspace by

  raw-create-link   the ceiling: in one Python loop over the file's lines, the fewest
                    syscalls that publish an item in the queue's layout:
                    open(ids/<id>, O_CREAT|O_EXCL) + write(the line) + close +
                    link(ids/<id>, pending/<name>). No validation, no staging, no report.
  enqueue           python -m harness.cli --root R enqueue FILE   (interpreter start in)
  enqueue --atomic  the same, all or nothing (staged and reserved whole, then published)

stdout of the CLI goes to /dev/null (it prints one line per item). Each CLI run's peak
RSS is its own (os.wait4 in a small launcher: see LAUNCH), so streaming shows as a flat
figure whatever --items is. Every run is checked: pending/ holds exactly --items names and
tmp/ is empty. Rounds alternate
the peers (--rounds, default 1; each round starts one peer later, so none always goes
first); medians are reported with the other CPU load seen.

No workspace is removed before the last peer of the last round has run. This disk is
ext4 without a journal: there a new inode skips every inode freed in the last 60 s (360 s
while its inode-table block is dirty; ext4 ``recently_deleted``), one buffer lookup each.
Removing the raw loop's million files right before the CLI ran made each of the CLI's
creates scan them (``recently_deleted`` and ``find_get_block_common`` were a fifth of its
profile) while the raw loop, run first, scanned none. Each peer's files take ~4 KB of
disk per item (12 GB a round at 1,000,000 items).

Targets (issue 15): enqueue >= 0.5 x raw-create-link items/s; peak RSS <= 100 MB.

Run:  python3 bench/enqueue.py              (1,000,000 items, one round; ~8 min here)
      python3 bench/enqueue.py --quick      (20,000 items)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import REPO_ROOT, Bench, load_avg, machine_line, med  # noqa: E402
from claims import cpu_busy  # noqa: E402

import orjson  # noqa: E402

RATIO_TARGET, RSS_TARGET_MB = 0.5, 100


def write_input(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": f"task-{i:07d}", "title": f"task {i}",
                                  "command": "true", "priority": i % 10}) + b"\n")


def raw_create_link(src: Path, queue: Path) -> None:
    ids, pending = f"{queue}/ids/", f"{queue}/pending/"
    flags, order = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, time.time_ns()
    with open(src, "rb") as f:
        for n, line in enumerate(f):
            item_id = f"task-{n:07d}"
            fd = os.open(ids + item_id, flags, 0o600)
            os.write(fd, line)
            os.close(fd)
            os.link(ids + item_id, f"{pending}5.{order + n:016x}.{item_id}~1")


# ru_maxrss of a child counts the memory image it was forked from (Linux records the old
# image's high-water mark at exec): forked from this process after a listing of a million
# names, an `enqueue` of 35 MB read as 211 MB. So a small interpreter forks the CLI and
# reports the CLI's own peak, in KiB, as the last line of stderr.
LAUNCH = """\
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\nmaxrss-kib {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli(ws: Path, src: Path, *flags: str) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, exit code) of one `enqueue` process."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCH, "-m", "harness.cli", "--root", str(ws),
                           "enqueue", *flags, str(src)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=REPO_ROOT)
    secs = time.perf_counter() - t
    last = done.stderr.decode(errors="replace").rstrip().rsplit("\n", 1)[-1]
    rss = int(last.split()[1]) / 1024 if last.startswith("maxrss-kib ") else float("nan")
    return secs, rss, done.returncode


def fresh(bench: Bench, tag: str) -> Path:
    from harness.queue.core import Queue

    ws = bench.workspace(tag)
    Queue(ws.queue_dir)
    return ws.root


def check(queue: Path, n: int) -> str:
    got, tmp = len(os.listdir(queue / "pending")), os.listdir(queue / "tmp")
    return "OK" if got == n and not tmp else f"FAILED (pending {got}, tmp {tmp[:3]})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 20,000 items")
    ap.add_argument("--items", type=int, default=None, help="items (default 1,000,000)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temp workspaces")
    args = ap.parse_args()
    n = args.items or (20_000 if args.quick else 1_000_000)
    results: dict[str, list[tuple[float, float, float]]] = {}
    bad = 0
    roots: list[Path] = []
    with Bench("enqueue-bench-", keep=args.keep) as bench:
        src = bench.tempdir("input") / "items.jsonl"
        print(machine_line(src.parent))
        print(f"command: python3 bench/enqueue.py {' '.join(sys.argv[1:])}".rstrip())
        write_input(src, n)
        print(f"input: {n} items, {src.stat().st_size / 2**20:.1f} MiB of JSON Lines")
        peers: list[tuple[str, tuple[str, ...] | None]] = [
            ("raw-create-link", None), ("enqueue", ()), ("enqueue --atomic", ("--atomic",))]
        for r in range(args.rounds):
            for peer, flags in peers[r % 3:] + peers[:r % 3]:
                root = fresh(bench, peer.replace(" ", ""))
                os.sync()
                busy0, t0 = cpu_busy(), time.perf_counter()
                if flags is None:
                    t = time.perf_counter()
                    raw_create_link(src, root / "queue")
                    secs, rss, code = time.perf_counter() - t, 0.0, 0
                else:
                    secs, rss, code = run_cli(root, src, *flags)
                wall = time.perf_counter() - t0
                other = max(0.0, cpu_busy() - busy0 - wall) / (wall * (os.cpu_count() or 1))
                verdict = check(root / "queue", n) if code in (0,) else f"FAILED (exit {code})"
                bad += verdict != "OK"
                results.setdefault(peer, []).append((n / secs, rss, other))
                print(f"round {r + 1} {peer:<18} {secs:8.1f} s {n / secs:9.0f} items/s"
                      f"  peak RSS {rss:6.1f} MB  other-cpu {other:4.0%}  {verdict}"
                      f"  load {load_avg()}", flush=True)
                roots.append(root)
        src.unlink()
        for root in roots:  # only now: see the module doc (recently freed inodes)
            shutil.rmtree(root.parent, ignore_errors=True)
    print()
    raw = med(r for r, _, _ in results["raw-create-link"])
    for peer in ("enqueue", "enqueue --atomic"):
        rate, rss = med(r for r, _, _ in results[peer]), max(m for _, m, _ in results[peer])
        print(f"target {peer} >= {RATIO_TARGET} x raw-create-link: {rate / raw:.2f}x"
              f" ({rate:.0f} vs {raw:.0f} items/s, medians) {'PASS' if rate / raw >= RATIO_TARGET else 'FAIL'}")
        print(f"target {peer} peak RSS <= {RSS_TARGET_MB} MB: {rss:.1f} MB"
              f" {'PASS' if rss <= RSS_TARGET_MB else 'FAIL'}")
    print(f"load average at end: {load_avg()}")
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
