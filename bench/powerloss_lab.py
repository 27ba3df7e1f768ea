#!/usr/bin/env python3
"""Real power cuts: a durable queue on an ext4 disk inside a User-mode Linux guest, killed.

tests/test_power_loss.py checks the promises of ``durable = true`` (docs/protocol.md §7)
against a model of what a disk keeps. This lab checks them against a real kernel: a UML
guest (Debian's ``user-mode-linux``: Linux run as an ordinary process) mounts an ext4
image as its disk and runs a durable workload (enqueue, claim, complete, retry,
dead-letter, promote, requeue, at random), writing a line before each call and after it
returns to a log on the host (fsynced through hostfs, so the host has it). At a random
moment the host SIGKILLs the guest's whole process group: whatever the guest kernel had
not written to its disk is gone, as in a power cut, while what it wrote (the image file,
in the host's page cache) stays. A second guest then checks the image (e2fsck where the
disk has no journal), mounts it, runs ``recover()`` as the coordinator would at its start
and judges every promise against the calls the log says returned
(tests/powerloss.judge, the same judge as the model's).

Run (root; installs nothing: ``apt-get install user-mode-linux e2fsprogs`` first):
    python3 bench/powerloss_lab.py                  # 10 cuts on ext4 with its journal
    python3 bench/powerloss_lab.py --no-journal     # ext4 without a journal (e2fsck first)
    python3 bench/powerloss_lab.py --cuts 3         # fewer
    python3 bench/powerloss_lab.py --not-durable    # the control: cuts must break promises
Every process started here is killed by the process group recorded at its start.
Exit status: 0 if no promise broke in any cut, 1 otherwise, 2 if the lab could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAB = Path("/tmp/plab")  # the guests see the host's / read-only, so this path too
INIT = REPO / "bench" / "powerloss_lab" / "guest-init.sh"
REASON = "broken input"


# -- in the guest ----------------------------------------------------------------------------

class AckLog:
    """Lines to the host before each call (``b``) and after it returned (``a``), each
    fsynced: hostfs keeps pages in the guest until then."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _line(self, tag: str, kind: str, item_id: str | None, arg: Any) -> None:
        os.write(self.fd, json.dumps({tag: [kind, item_id, arg]}).encode() + b"\n")
        os.fsync(self.fd)

    def begin(self, kind: str, item_id: str | None = None, arg: Any = 0) -> None:
        self._line("b", kind, item_id, arg)

    def ack(self, kind: str, item_id: str, arg: Any) -> None:
        self._line("a", kind, item_id, arg)


def guest_work(root: Path, out: Path) -> None:
    """Until the power goes: random transitions on a durable queue, each logged."""
    from harness.queue.core import Queue

    q = Queue(root, durable=os.environ.get("DURABLE") != "0", relist_interval=0,
              max_attempts=3, backoff_base=0.001, backoff_max=0.01)
    log, rng, n = AckLog(out / "acks.log"), random.Random(), 0
    while True:
        n += 1
        item_id = f"it-{n}"
        log.begin("enqueue", item_id)
        q.enqueue({"id": item_id, "title": f"power-cut item {n}"})
        log.ack("enqueue", item_id, (root / "ids" / item_id).read_bytes().hex())
        log.begin("promote")
        for name in q.promote():
            log.ack("promote", name.id, name.attempt)
        log.begin("claim")
        claim = q.claim()
        if claim is None:
            continue
        log.ack("claim", claim.id, claim.attempt)
        roll = rng.random()
        if roll < 0.5:
            log.begin("complete", claim.id, claim.attempt)
            claim.complete()
            log.ack("complete", claim.id, claim.attempt)
        elif roll < 0.85:
            log.begin("retry", claim.id, claim.attempt)
            outcome = claim.fail(REASON, retry=True)  # at the limit: dead-lettered
            log.ack("retry" if outcome == "retry" else "dead-letter", claim.id, claim.attempt)
        else:
            log.begin("dead-letter", claim.id, claim.attempt)
            claim.fail(REASON, retry=False)
            log.ack("dead-letter", claim.id, claim.attempt)
            if rng.random() < 0.5:
                log.begin("requeue", claim.id, claim.attempt + 1)
                new = q.requeue_failed(claim.id)
                log.ack("requeue", claim.id, new.attempt)


def guest_check(root: Path, out: Path) -> None:
    """After the cut: recover, then judge every promise against the log."""
    sys.path.insert(0, str(REPO / "tests"))
    from powerloss import judge

    from harness.queue.core import Queue
    from harness.queue.recovery import recover

    acked: list[tuple[Any, ...]] = []
    in_flight: tuple[Any, ...] | None = None
    for line in (out / "acks.log").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line the cut tore (the host's file is only as long as was written)
        if "b" in rec:
            in_flight = tuple(rec["b"])
        else:
            kind, item_id, arg = rec["a"]
            acked.append((kind, item_id, bytes.fromhex(arg) if kind == "enqueue" else arg))
            in_flight = None if kind != "promote" else in_flight
    q = Queue(root, durable=True, relist_interval=0, max_attempts=3)
    actions = recover(q, revoke_claims=True)
    broken = judge(q, acked, in_flight, journaled=os.environ.get("FSCK") != "1",
                   every_unsynced_lost=False)
    verdict = {"acked": len(acked), "in_flight": in_flight, "recover_actions": len(actions),
               "counts": q.counts(), "broken": sorted(f"{p}: {d}" for p, d in broken)}
    (out / "verdict.json").write_text(json.dumps(verdict, indent=1))


# -- on the host -----------------------------------------------------------------------------

def boot(role: str, img: Path, fsck: bool, durable: bool = True) -> subprocess.Popen[bytes]:
    """One guest on ``img``; its own session, so one killpg is the power switch."""
    args = ["linux", f"umid=plab-{role}-{os.getpid()}", "mem=384M", "root=/dev/root",
            "rootfstype=hostfs", "rootflags=/", "ro", f"init={INIT}", f"ubd0={img}",
            "con0=null,fd:1", "con=null", "ssl=null", "quiet", f"ROLE={role}", f"P={LAB}",
            f"PY={sys.executable}", f"LAB={Path(__file__).resolve()}", f"FSCK={int(fsck)}",
            f"DURABLE={int(durable)}"]
    with open(LAB / "out" / f"{role}.console", "ab") as console:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                start_new_session=True, env={**os.environ, "TMPDIR": "/dev/shm"})


def cut(proc: subprocess.Popen[bytes]) -> None:
    """Kill the guest's whole process group (its kernel and every process it runs)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise SystemExit(f"guest group {proc.pid} did not end")


def one_cut(k: int, journal: bool, durable: bool, rng: random.Random) -> dict[str, Any]:
    out = LAB / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    img = LAB / "disk.img"
    img.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", "256M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", *([] if journal else ["-O", "^has_journal"]),
                    str(img)], check=True)
    work = boot("work", img, fsck=False, durable=durable)
    try:
        deadline = time.monotonic() + 120
        while not (out / "acks.log").exists() or (out / "acks.log").stat().st_size < 2000:
            if work.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cut {k}: the work guest did not start; see {out}/work.log")
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 4.0))
    finally:
        cut(work)
    check = boot("check", img, fsck=not journal)
    try:
        check.wait(timeout=300)
    finally:
        cut(check)
    verdict_file = out / "verdict.json"
    if not verdict_file.exists():
        raise SystemExit(f"cut {k}: no verdict; see {out}/check.log")
    return json.loads(verdict_file.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=int, default=10)
    ap.add_argument("--no-journal", action="store_true", help="ext4 made without a journal")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--not-durable", action="store_true",
                    help="the control: the workload without durable, where cuts must break"
                         " promises (else the lab proves nothing)")
    ap.add_argument("--guest", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.guest:
        sys.path.insert(0, str(REPO))
        root, out = map(Path, args.paths)
        (guest_work if args.guest == "work" else guest_check)(root, out)
        return 0
    for tool in ("linux", "mkfs.ext4", "e2fsck"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install user-mode-linux e2fsprogs", file=sys.stderr)
            return 2
    (LAB / "mnt" / "out").mkdir(parents=True, exist_ok=True)
    (LAB / "mnt" / "q").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    disk = "ext4 without a journal" if args.no_journal else "ext4 with its journal"
    disk += ", durable = false" if args.not_durable else ", durable = true"
    failures = 0
    for k in range(1, args.cuts + 1):
        v = one_cut(k, not args.no_journal, not args.not_durable, rng)
        failures += bool(v["broken"])
        print(f"cut {k}/{args.cuts} ({disk}): {v['acked']} calls returned before the cut,"
              f" in flight {v['in_flight']}; after recover {v['counts']}"
              f" ({v['recover_actions']} repairs); promises broken: {len(v['broken'])}",
              flush=True)
        for line in v["broken"][:10]:
            print(f"    {line}")
    print(f"{failures} of {args.cuts} cuts broke a promise")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
