#!/usr/bin/env python3
"""Several hosts on real NFS: the project's multi-host mode in a User-mode Linux lab.

The lab (bench/nfs_lab/, adapted from shared/nfs-lab/) is one knfsd 6.1 server guest and NFS
client guests, each its own Linux kernel run as a process, wired by uml_switch over a unix
socket (no host interface, no tuntap, no slirp, no network namespace). Each guest's / is the
host's / through hostfs, read-only: the guests run THIS checkout's code and venv
(<checkout>/.venv, created here if missing). Server: NFSv3/4.0/4.1/4.2, lease and grace 15 s.
Clients: vers=4.2 unless the scenario says otherwise. Workspaces live on the export.

Scenarios (each verified with `parallel-harness fsck`, queue.invariants.check and the events):

  hammer     two hosts x K processes claim one queue with harness.queue.Queue (claim + complete)
  kill       two coordinators (`run --agents 3`, multi_host = true, host_stale_after = 45 s);
             once 2 of host A's workers hold items, A's coordinator, workers and agents are
             SIGKILLed (pids from A's own event log); B must bury A and run its items
  poweroff   the same, but A's guest is halted from outside (uml_mconsole halt: no unmount,
             its NFS client state stays on the server until the 15 s lease expires)
  freeze     the same, but A's whole guest is stopped (uml_mconsole stop) for --freeze s (>
             host_stale_after), then resumed (go): A must stop (exit 3, host-fenced) and record
             nothing; its workers' late results are fenced
  nolock     one client each mounted vers=3,nolock and vers=4.0: `run` must exit 2 with the
             reason before touching the queue; and vers=4.2 with nolock, local_lock=flock,
             local_lock=all: Linux 6.1's v4 client ignores those (mountinfo: local_lock=none,
             locks go to the server), so `run` must accept them and run
  duplicate  two guests with the same hostname and the same HARNESS_HOST_ID: while the first
             runs, the second's `run` must be refused (exit 2), nothing corrupted
  duphost    two guests with the same hostname but default host ids (hostname + boot id
             differ): the second's `run` must be refused as well (exit 2): two NFS clients
             with one name share one NFSv4 client id

Per scenario it prints: double claims (an (item, attempt) claimed by two workers, an item
recorded done twice, or two names of one item in done/), lost items (enqueued, not in done/ or
failed/ at the end), fenced results (attempt-end reason=fenced: late results discarded), late
records (attempt-ends of the buried host after its burial that moved the queue: must be 0),
failover (from the fault to B's host-dead event / to B's first revoke of A's claims / to the
first re-claim of one of them, from the harness's own event timestamps; the guests' clocks are
the host's clock), exit codes and refusals.

host_stale_after = 45 s: three times the lab server's 15 s NFSv4 lease (a host powered off
keeps its NFS state that long; a frozen host's lease lapses after it). Lease files are read by
open(), which revalidates (close-to-open), so acdirmax (60 s) does not delay them; in
production keep the default 300 s or at least 2 x lease + acdirmax.

Run (as root; apt installs the lab's packages when missing; ~25 min on 2 cores):
    python3 bench/nfs_lab.py                       # all default scenarios, then teardown
    python3 bench/nfs_lab.py --scenarios kill,freeze --items 24
    python3 bench/nfs_lab.py --keep                # leave it up: bash bench/nfs_lab/uml.sh down
Paths are fixed under /tmp/nfs/uml (the guests see them at the same paths).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "bench" / "nfs_lab"
U = Path("/tmp/nfs/uml")
NFS = U / "mnt" / "nfs"        # the export, as the clients see it
GOUT = U / "mnt" / "out"       # the guests' view of U/out (hostfs, read-write)
OUT = U / "out"
sys.path.insert(0, str(REPO))

from harness.queue import names  # noqa: E402

DEFAULT = ["hammer", "kill", "poweroff", "freeze", "nolock", "duplicate", "duphost"]
IP = {"setup": "10.77.0.8", "check": "10.77.0.9", "A": "10.77.0.2", "B": "10.77.0.3"}


# -- the lab -------------------------------------------------------------------------

def uml(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["bash", str(LAB / "uml.sh"), *args], check=True, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}).stdout


def setup_lab() -> None:
    if not (REPO / ".venv" / "bin" / "parallel-harness").exists():
        print("creating the checkout's venv (the guests run it through hostfs)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(REPO / ".venv")], check=True)
        subprocess.run([str(REPO / ".venv/bin/pip"), "install", "-q", "-e", f"{REPO}[test]"],
                       check=True)
    print(uml("setup").strip() or "lab set up", flush=True)
    print(uml("up").strip(), flush=True)


def boot(umid: str, job: str, hostname: str | None = None, **kv: str) -> int:
    """Boot a client guest that runs ``job`` (shell text) and powers off; its pid."""
    path = U / "jobs" / "gen" / f"{umid}-{int(time.time() * 1000)}.sh"
    path.write_text(f"export REPO={REPO}\n{job}\n")
    ip = kv.pop("ip", IP.get(umid, "10.77.0.20"))
    out = uml("client", umid, ip, str(path), *(f"{k}={v}" for k, v in kv.items()),
              env={"GH": hostname or umid, "MEM": "1024M"})
    return int(out.strip().splitlines()[-1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_pid(pid: int, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while alive(pid):
        if time.time() > deadline:
            raise TimeoutError(f"{what} (pid {pid}) still running after {timeout:.0f}s")
        time.sleep(0.25)


def mconsole(umid: str, cmd: str) -> float:
    t = time.time()
    subprocess.run(["uml_mconsole", umid, cmd], check=True, capture_output=True, timeout=30)
    return t


def job(tag: str, step: str, **kv: Any) -> str:
    lines = [f"W={NFS}/ws-{tag} O={GOUT}/{tag} STEP={step}",
             *(f"{k}={v}" for k, v in kv.items()), f". {U}/jobs/coord.sh"]
    return "\n".join(lines)


def fresh(tag: str) -> Path:
    d = OUT / tag
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


# -- what the guests left ------------------------------------------------------------

def timeline(d: Path) -> list[tuple[float, str, str]]:
    out = []
    for f in d.glob("*.timeline"):
        for line in f.read_text().splitlines():
            ts, who, msg = line.split(" ", 2)
            out.append((float(ts), who, msg))
    return sorted(out)


def read_events(d: Path) -> tuple[list[dict[str, Any]], int]:
    evs, bad = [], 0
    for f in sorted((d / "events").glob("*.jsonl")):
        for line in f.read_bytes().split(b"\n"):
            if not line.strip(b"\0 "):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                bad += 1
                continue
            ev["_log"] = f.stem
            evs.append(ev)
    return sorted(evs, key=lambda e: e["ts"]), bad


def listing(d: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for line in (d / "listing.txt").read_text().splitlines():
        state, _, entry = line.partition(" ")
        if not entry.startswith(".") and not entry.endswith(names.REASON_SUFFIX):
            out[state].append(entry)
    return out


def item_id(entry: str) -> str:
    parsed = names.try_parse(entry)
    return parsed.id if parsed else entry


def host_ids(tl: list[tuple[float, str, str]]) -> dict[str, str]:
    """guest (hostname-ip) -> its harness host id."""
    return {who: msg.split()[-1] for _, who, msg in tl if msg.startswith("host id ")}


def queue_figures(d: Path, evs: list[dict[str, Any]], ids: list[str]) -> dict[str, Any]:
    ls = listing(d)
    done = Counter(item_id(e) for e in ls["done"])
    failed = {item_id(e) for e in ls["failed"]}
    claims: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in evs:
        if e["event"] == "claim":
            claims[(e["item"], e["attempt"])].add(e["worker"])
    done_ends = Counter(e["item"] for e in evs if e["event"] == "attempt-end"
                        and e.get("queue") == "done")
    fsck = (d / "fsck.out").read_text().strip().splitlines() if (d / "fsck.out").exists() else []
    inv = json.loads((d / "invariants.json").read_text() or "[]") \
        if (d / "invariants.json").exists() else ["(no invariants.json)"]
    return {
        "items": len(ids),
        "double_claims": sum(len(w) > 1 for w in claims.values())
        + sum(n > 1 for n in done_ends.values()) + sum(n > 1 for n in done.values()),
        "lost": len(set(ids) - set(done) - failed),
        "done": len(done), "failed": len(failed),
        "left": {s: len(ls[s]) for s in ("pending", "claimed", "waiting") if ls[s]},
        "attempts": dict(Counter(a for (_, a) in claims)),
        "fsck_rc": (d / "fsck.rc").read_text().strip() if (d / "fsck.rc").exists() else "?",
        "fsck": fsck[-1] if fsck else "", "violations": len(inv), "violation_text": inv[:5],
    }


def coord_figures(d: Path, ids: list[str], fault_ts: float | None,
                  resume_ts: float | None = None) -> dict[str, Any]:
    tl = timeline(d)
    evs, bad = read_events(d)
    hid = host_ids(tl)
    a_id = next((v for k, v in hid.items() if k.startswith(("hostA", "twin-10.77.0.2"))), None)
    fig = queue_figures(d, evs, ids)
    fig["unparseable_event_lines"] = bad
    fig["enqueued"] = next((int(m.split()[2]) for _, _, m in tl if m.startswith("setup done:")),
                           None)
    if fault_ts is None:  # kill: the fault time is in A's own timeline
        fault_ts = next((ts for ts, _, msg in tl if msg.startswith("FAULT")), None)
    dead = [e for e in evs if e["event"] == "host-dead" and e.get("host") == a_id]
    revokes = [e for e in evs if e["event"] == "revoke" and e.get("why") == f"host {a_id} dead"]
    taken = {names.try_parse(e["item"]).id for e in revokes if names.try_parse(e["item"])}
    reclaims = [e for e in evs if e["event"] == "claim" and e["item"] in taken
                and not str(e["worker"]).startswith(f"{a_id}.") and e["ts"] > (fault_ts or 0)]
    buried_at = dead[0]["ts"] if dead else None
    a_ends = [e for e in evs if e["event"] == "attempt-end"
              and str(e.get("worker", "")).startswith(f"{a_id}.")]
    fig.update({
        "host_a": a_id, "fault_ts": fault_ts,
        "host_dead": [(e["host"], e.get("_log"), e.get("silent_s")) for e in dead],
        "claims_taken_back": len(revokes),
        "fenced_results": sum(e.get("reason") == "fenced" for e in a_ends),
        "late_records": sum(1 for e in a_ends if buried_at and e["ts"] > buried_at
                            and e.get("queue") not in (None, "none")),
        "host_fenced": [(e.get("host"), e.get("by")) for e in evs if e["event"] == "host-fenced"],
        "revokes": dict(Counter("host dead" if str(e.get("why")).startswith("host ")
                                else e.get("why") for e in evs if e["event"] == "revoke")),
    })
    if fault_ts and buried_at:
        fig["failover_s"] = {
            "host_dead": round(buried_at - fault_ts, 2),
            "revoke": round(revokes[0]["ts"] - fault_ts, 2) if revokes else None,
            "reclaimed": round(reclaims[0]["ts"] - fault_ts, 2) if reclaims else None}
    if resume_ts:
        fenced_at = [e["ts"] for e in evs if e["event"] == "host-fenced"]
        fig["resume_to_fenced_s"] = round(fenced_at[0] - resume_ts, 2) if fenced_at else None
    fig["exits"] = {who: msg for _, who, msg in tl if "exit" in msg}
    fig["timeline"] = [f"{ts - tl[0][0]:7.2f} {who} {msg[:160]}" for ts, who, msg in tl]
    return fig


# -- scenarios -----------------------------------------------------------------------

def scen_hammer(args: argparse.Namespace) -> dict[str, Any]:
    tag, n, k = "hammer", args.hammer, args.claimers
    d = fresh(tag)
    root, o = f"{NFS}/ham/queue", f"{GOUT}/{tag}"
    py, ham = f"{REPO}/.venv/bin/python", f"{U}/jobs/hammer.py"
    wait_pid(boot("setup", f"rm -rf {NFS}/ham; {py} {ham} setup {root} {n} {o}/setup.json",
                  "labsetup"), 900, "hammer setup")
    start = time.time() + args.lead
    claim = f"{py} {ham} claim {root} {k} {start} {o}"
    pids = [boot("A", claim, "hostA"), boot("B", claim, "hostB")]
    for pid in pids:
        wait_pid(pid, 1800, "hammer claimers")
    wait_pid(boot("check", f"{py} {ham} verify {root} {n} {o}/verify.json", "labcheck"), 900,
             "hammer verify")
    reps = [json.loads(p.read_text()) for p in sorted(d.glob("host*-*.json"))]
    ver = json.loads((d / "verify.json").read_text())
    claims = Counter(c for r in reps for c in r["claims"])
    by_id = Counter(item_id(c) for r in reps for c in r["claims"])
    done_ids = Counter(item_id(x) for x in ver["done"])
    expected = {f"h{i:05d}" for i in range(n)}
    t0 = min(r["t_start"] for r in reps)
    t1 = max(r["t_last"] for r in reps)
    return {
        "items": n, "processes": len(reps),
        "per_host": dict(Counter(r["host"] for r in reps for _ in r["claims"])),
        "double_claims": sum(v > 1 for v in claims.values()) + sum(v > 1 for v in by_id.values())
        + sum(v > 1 for v in done_ids.values()),
        "lost": len(expected - set(done_ids) - {item_id(x) for x in ver["failed"]}),
        "left": {s: len(ver[s]) for s in ("pending", "claimed", "waiting") if ver[s]},
        "errors": dict(sum((Counter(r["errors"]) for r in reps), Counter())),
        "violations": len(ver["violations"]), "violation_text": ver["violations"][:5],
        "seconds": round(t1 - t0, 1), "claims_per_s": round(sum(claims.values()) / (t1 - t0), 1),
    }


def coord_pair(args: argparse.Namespace, tag: str, fault: str) -> dict[str, Any]:
    """Two coordinators; A suffers ``fault`` (kill | poweroff | freeze)."""
    d = fresh(tag)
    ids = [f"it-{i:02d}" for i in range(args.items)]
    wait_pid(boot("setup", job(tag, "setup", NITEMS=args.items, SECS=args.secs,
                               STALE=args.stale_after), "labsetup"), 900, "setup")
    t0 = int(time.time() + args.lead)
    a_fault = "kill" if fault == "kill" else "mark"
    pa = boot("A", job(tag, "host", T0=t0, FAULT=a_fault, READY=2, MIN_AT=args.min_at), "hostA")
    pb = boot("B", job(tag, "host", T0=t0 + 3, FAULT="none"), "hostB")
    fault_ts = resume_ts = None
    if fault in ("poweroff", "freeze"):
        deadline = time.time() + 600
        while not (d / "ready.hostA").exists():
            if time.time() > deadline or not alive(pa):
                raise RuntimeError(f"{tag}: host A never got ready (see {d})")
            time.sleep(0.2)
        if fault == "poweroff":
            fault_ts = mconsole("A", "halt")
        else:
            fault_ts = mconsole("A", "stop")
            time.sleep(args.freeze)
            resume_ts = mconsole("A", "go")
        (d / "host.timeline").write_text(
            f"{fault_ts:.3f} lab FAULT {fault} hostA (uml_mconsole)\n"
            + (f"{resume_ts:.3f} lab RESUME hostA (uml_mconsole go)\n" if resume_ts else ""))
    for pid, who in ((pa, "host A"), (pb, "host B")):
        wait_pid(pid, 1800, who)
    wait_pid(boot("check", job(tag, "collect"), "labcheck"), 900, "collect")
    return coord_figures(d, ids, fault_ts, resume_ts)


def scen_duplicate(args: argparse.Namespace, tag: str = "duplicate",
                   same_id: bool = True) -> dict[str, Any]:
    """Two guests named 'twin'; with ``same_id`` also one HARNESS_HOST_ID."""
    d = fresh(tag)
    ids = [f"it-{i:02d}" for i in range(args.items)]
    wait_pid(boot("setup", job(tag, "setup", NITEMS=args.items, SECS=args.secs,
                               STALE=args.stale_after), "labsetup"), 900, "setup")
    t0 = int(time.time() + args.lead)
    hid = {"HOST_ID": "twin"} if same_id else {}
    pa = boot("A", job(tag, "host", T0=t0, FAULT="mark", READY=2, **hid), "twin")
    deadline = time.time() + 600
    while not (d / "ready.twin").exists():
        if time.time() > deadline or not alive(pa):
            raise RuntimeError(f"{tag}: the first twin never got ready (see {d})")
        time.sleep(0.2)
    # Also with default host ids (they differ by boot id): the second machine with this
    # hostname must be refused, or the server would drop the first one's NFS locks.
    pb = boot("B", job(tag, "twin", TRIES=3, **hid), "twin")
    for pid, who in ((pa, "first twin"), (pb, "second twin")):
        wait_pid(pid, 1800, who)
    wait_pid(boot("check", job(tag, "collect"), "labcheck"), 900, "collect")
    fig = coord_figures(d, ids, None)
    fig["twin_runs"] = [msg for _, who, msg in timeline(d) if "twin run attempt" in msg
                        and "exit" in msg]
    return fig


NOLOCK = (  # (vers, options, the exit `run` must give, why): Linux 6.1's v4 client ignores
    # nolock and local_lock= (its mountinfo says local_lock=none; locks go to the server)
    ("4.2", "nolock", 0, "v4 ignores nolock: local_lock=none"),
    ("4.2", "local_lock=flock", 0, "v4 ignores local_lock: local_lock=none"),
    ("4.2", "local_lock=all", 0, "v4 ignores local_lock: local_lock=none"),
    ("3", "nolock", 2, "per-host locks"),
    ("4.0", "", 2, "NFS < 4.1"),
)


def scen_nolock(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for vers, opts, want, why in NOLOCK:
        tag = f"mount-v{vers}{'-' + opts.replace('=', '-') if opts else ''}"
        d = fresh(tag)
        kv = {"NFSVERS": vers, **({"NFSOPTS": opts} if opts else {})}
        wait_pid(boot("A", job(tag, "refuse", NITEMS=2, SECS=1, STALE=args.stale_after),
                      "hostN", **kv), 900, tag)
        tl = timeline(d)
        mi = (d / "mountinfo-hostN-10.77.0.2.txt")
        opts_seen = mi.read_text().split(" - ")[-1].split() if mi.exists() else ["?"] * 3
        out[tag] = {"mount": " ".join(o for o in opts_seen[2].split(",") if o.startswith(
                        ("vers", "local_lock", "nolock"))) if len(opts_seen) > 2 else "?",
                    "expect": f"exit {want} ({why})",
                    "run": next((m for _, _, m in tl if m.startswith("refuse run exit")), "?"),
                    "queue": next((m for _, _, m in tl if m.startswith("queue after")), "?")}
        out[tag]["as_expected"] = out[tag]["run"].startswith(f"refuse run exit {want}:")
    return out


# -- report --------------------------------------------------------------------------

def row(name: str, f: dict[str, Any]) -> str:
    fo = f.get("failover_s") or {}
    fo_s = (f"{fo.get('host_dead')} / {fo.get('revoke')} / {fo.get('reclaimed')}"
            if fo else "-")
    return (f"{name:10} {f.get('items', '-'):>5} {f.get('double_claims', '-'):>7} "
            f"{f.get('lost', '-'):>5} {f.get('fenced_results', '-'):>7} "
            f"{f.get('late_records', '-'):>5}  {fo_s:24} fsck {f.get('fsck_rc', '-')}"
            f" viol {f.get('violations', '-')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(DEFAULT),
                    help=f"comma-separated, from {DEFAULT}")
    ap.add_argument("--items", type=int, default=24, help="items per coordinator scenario")
    ap.add_argument("--secs", type=float, default=5.0, help="seconds per sim item")
    ap.add_argument("--hammer", type=int, default=3000, help="hammer items")
    ap.add_argument("--claimers", type=int, default=4, help="hammer processes per host")
    ap.add_argument("--stale-after", type=float, default=45.0, help="[run] host_stale_after")
    ap.add_argument("--freeze", type=float, default=70.0, help="seconds host A is frozen")
    ap.add_argument("--min-at", type=int, default=15,
                    help="no fault before T0 + this (s): some items are done first")
    ap.add_argument("--lead", type=float, default=15.0, help="seconds from boot to T0")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    ap.add_argument("--json", type=Path, default=OUT / "summary.json")
    args = ap.parse_args()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    print(f"nfs lab: code {rev} ({REPO}); host_stale_after {args.stale_after}s; "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, Any] = {"code": rev, "stale_after": args.stale_after,
                               "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        setup_lab()
        for name in chosen:
            t = time.time()
            print(f"--- {name}", flush=True)
            try:
                if name == "hammer":
                    fig = scen_hammer(args)
                elif name in ("kill", "poweroff", "freeze"):
                    fig = coord_pair(args, name, name)
                elif name == "duplicate":
                    fig = scen_duplicate(args)
                elif name == "duphost":
                    fig = scen_duplicate(args, "duphost", same_id=False)
                elif name == "nolock":
                    fig = scen_nolock(args)
                else:
                    raise SystemExit(f"unknown scenario {name}")
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                fig = {"error": str(exc)}
            fig["wall_s"] = round(time.time() - t, 1)
            results[name] = fig
            print(json.dumps({k: v for k, v in fig.items() if k != "timeline"}, indent=1,
                             default=str), flush=True)
            args.json.write_text(json.dumps(results, indent=1, default=str))
    finally:
        if not args.keep:
            print(uml("down").strip(), flush=True)
    print("\nscenario   items  double  lost  fenced  late  failover s (dead/revoke/reclaim)")
    for name in chosen:
        f = results.get(name, {})
        if name == "nolock":
            for tag, r in f.items():
                if isinstance(r, dict):
                    print(f"{tag:27} [{r['mount']}] {'ok' if r['as_expected'] else 'UNEXPECTED'}"
                          f" {r['run'][:90]}")
        else:
            print(row(name, f))
            if f.get("twin_runs"):
                for m in f["twin_runs"]:
                    print(f"{'':10} {m[:140]}")
            if f.get("exits"):
                print(f"{'':10} exits: " + "; ".join(f"{k}: {v[:60]}"
                                                       for k, v in f["exits"].items()))
    print(f"(full figures and timelines: {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
