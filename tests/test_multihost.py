"""Several hosts, one queue (issue 14), on one machine: coordinators with different
HARNESS_HOST_IDs share one workspace; whole "hosts" (coordinator, workers, agents) are
SIGKILLed and SIGSTOPped past their lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.liveness import heartbeat, hosts
from harness.queue import names
from harness.queue.core import Queue
from harness.queue.invariants import check
from harness.queue.mounts import Mount, mount_of, multi_host_problem
from harness.workspace import Workspace
from tests.wsutil import events, heartbeat_of, kill_all, make_workspace, wait_for

pytestmark = pytest.mark.timeout(180)

MULTI = "multi_host = true\nhost_stale_after = 3.0\n"


@pytest.fixture
def ws(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    text = (ws.root / "harness.toml").read_text().replace("[run]\n", "[run]\n" + MULTI)
    (ws.root / "harness.toml").write_text(text + '\n[agent]\npreset = "shell"\n')
    yield ws
    kill_all(ws)


def start_host(ws, host: str, *args: str) -> subprocess.Popen[bytes]:
    log = open(ws.root / f"{host}.out", "ab")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run", *args],
            stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, hosts.HOST_ID_ENV: host})


def host_processes(ws, host: str) -> list[int]:
    """The pids of a host's coordinator, workers and agents, from its own event log."""
    pids = set()
    for ev in events(ws):
        if ev.get("event") == "worker-spawn" and ev["worker"].startswith(host + "."):
            pids.add(ev["pid"])
        if ev.get("event") == "agent-start" and ev["worker"].startswith(host + "."):
            pids.add(ev["agent_pid"])
    return sorted(pids)


def signal_host(ws, proc, host: str, sig: int) -> None:
    for pid in [proc.pid, *host_processes(ws, host)]:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def done_once(ws, ids) -> None:
    done = Counter(names.parse(e).id for e in names.entries(ws.queue_dir / "done"))
    assert sorted(done) == sorted(ids) and set(done.values()) == {1}
    ends = Counter(e["item"] for e in events(ws) if e.get("event") == "attempt-end"
                   and e.get("queue") == "done")
    assert ends == Counter({i: 1 for i in ids}), "an item was recorded done twice"
    assert check(ws.queue_dir) == []


def enqueue(ws, n, seconds=0.0):
    queue = Queue(ws.queue_dir)
    ids = [f"item-{i:02d}" for i in range(n)]
    for item_id in ids:
        queue.enqueue({"id": item_id, "command": f"sleep {seconds}; echo {item_id} > {item_id}"})
    return ids


def test_two_hosts_share_the_queue_each_item_once_and_no_name_collides(ws):
    ids = enqueue(ws, 30)
    a, b = start_host(ws, "hostA", "--agents", "2"), start_host(ws, "hostB", "--agents", "2")
    try:
        assert a.wait(timeout=120) == 0, (ws.root / "hostA.out").read_text()
        assert b.wait(timeout=120) == 0, (ws.root / "hostB.out").read_text()
    finally:
        kill_all(ws, a)
        kill_all(ws, b)
    done_once(ws, ids)
    workers = {e["worker"] for e in events(ws) if e.get("event") == "attempt-end"}
    assert workers <= {"hostA.w1", "hostA.w2", "hostB.w1", "hostB.w2"}
    assert {w.split(".")[0] for w in workers} == {"hostA", "hostB"}, "one host did all"
    logs = sorted(p.name for p in (ws.state_dir / "events").iterdir())
    assert logs == ["hostA.jsonl", "hostB.jsonl"] and not ws.events_file.exists()
    for host in ("hostA", "hostB"):
        starts = [e for e in events(ws) if e.get("event") == "worker-start"
                  and e["worker"].startswith(host)]
        assert all(e["pid"] in host_processes(ws, host) for e in starts)


def test_a_sigkilled_host_is_buried_and_its_claims_run_elsewhere(ws):
    ids = enqueue(ws, 12, seconds=0.5)
    a = start_host(ws, "hostA", "--agents", "2", "--forever")
    b = None
    try:
        wait_for(lambda: any((heartbeat_of(ws, f"hostA.w{n}") or {}).get("agent_pid")
                             for n in (1, 2)), 30, "host A to be working")
        b = start_host(ws, "hostB", "--agents", "2")
        wait_for(lambda: (ws.hosts_dir / "hostB.json").exists(), 30, "host B to start")
        signal_host(ws, a, "hostA", signal.SIGKILL)
        assert b.wait(timeout=120) == 0, (ws.root / "hostB.out").read_text()
    finally:
        kill_all(ws, a)
        if b is not None:
            kill_all(ws, b)
    dead = [e for e in events(ws) if e.get("event") == "host-dead"]
    assert [e["host"] for e in dead] == ["hostA"] and dead[0]["source"] == "coordinator"
    assert (ws.hosts_dir / "hostA.dead").exists()
    done_once(ws, ids)
    status = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                             "status"], capture_output=True, text=True).stdout
    assert "host     hostA  DEAD (declared by hostB)" in status, status
    assert "host     hostB" not in status  # it ended cleanly: its lease is gone


def test_a_frozen_host_that_wakes_after_its_burial_stops_and_records_nothing(ws):
    ids = enqueue(ws, 10, seconds=1.0)
    a = start_host(ws, "hostA", "--agents", "2", "--forever")
    b = None
    try:
        wait_for(lambda: all((heartbeat_of(ws, f"hostA.w{n}") or {}).get("agent_pid")
                             for n in (1, 2)), 30, "both of host A's workers to be working")
        frozen = {heartbeat_of(ws, f"hostA.w{n}")["item_id"] for n in (1, 2)}
        signal_host(ws, a, "hostA", signal.SIGSTOP)
        b = start_host(ws, "hostB", "--agents", "2", "--forever")
        wait_for(lambda: any(e.get("event") == "host-dead" for e in events(ws)), 60,
                 "host B to bury host A")
        buried_at = next(e["ts"] for e in events(ws) if e.get("event") == "host-dead")
        wait_for(lambda: all(any((ws.queue_dir / "done").glob(f"*.{i}~*")) for i in frozen),
                 60, "host B to run what host A held")
        signal_host(ws, a, "hostA", signal.SIGCONT)
        assert a.wait(timeout=60) == 3, (ws.root / "hostA.out").read_text()
        assert "declared dead by host hostB" in (ws.root / "hostA.out").read_text()
        wait_for(lambda: len(names.entries(ws.queue_dir / "done")) == len(ids), 90,
                 "every item to be done")
        b.terminate()
        assert b.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        kill_all(ws, a)
        if b is not None:
            kill_all(ws, b)
    late = [e for e in events(ws) if e.get("event") == "attempt-end" and e["ts"] > buried_at
            and str(e.get("worker")).startswith("hostA.") and e.get("queue") != "none"]
    assert late == [], f"host A recorded after its burial: {late}"
    done_once(ws, ids)
    assert any(e.get("event") == "host-fenced" for e in events(ws))


def test_a_host_started_beside_a_working_one_leaves_its_agents_and_claims_alone(ws):
    """Both hosts on one kernel: host B's start-up sweep for agents "left by an earlier
    run" once killed host A's live agents (their marks name this workspace too)."""
    ids = enqueue(ws, 2, seconds=2.0)
    a = start_host(ws, "hostA", "--agents", "2")
    b = None
    try:
        wait_for(lambda: all((heartbeat_of(ws, f"hostA.w{n}") or {}).get("agent_pid")
                             for n in (1, 2)), 30, "both of host A's workers to be working")
        b = start_host(ws, "hostB", "--agents", "1")
        assert a.wait(timeout=60) == 0, (ws.root / "hostA.out").read_text()
        assert b.wait(timeout=60) == 0, (ws.root / "hostB.out").read_text()
    finally:
        kill_all(ws, a)
        if b is not None:
            kill_all(ws, b)
    assert [e for e in events(ws) if e.get("event") in ("orphans-killed", "revoke")] == []
    ends = {e["item"]: (e["worker"], e["attempt"], e["reason"]) for e in events(ws)
            if e.get("event") == "attempt-end"}
    assert {w.split(".")[0] for w, _, _ in ends.values()} == {"hostA"}
    assert {(n, r) for _, n, r in ends.values()} == {(1, "succeeded")}
    done_once(ws, ids)


def test_a_buried_workers_verdict_sticks(ws):
    """The attempt's fence check read the tombstone; the loop asked again within the
    heartbeat interval and, rate-limited, heard "not buried": it claimed again."""
    from harness import config
    from harness.pool.worker import Worker

    host_ws = Workspace.at(ws.root, "hostA")
    host_ws.make_dirs()
    worker = Worker(host_ws, config.load(ws.config_file), "hostA.w1", "g1", "gen-A")
    assert not worker.buried()
    worker._buried_checked = -1e9
    hosts.bury(host_ws, "hostA", "gen-A", by="hostB")
    assert worker.buried() and worker.buried() and worker.buried()


def test_a_claim_named_only_by_a_buried_hosts_heartbeat_is_revoked(ws, monkeypatch):
    """A buried host's worker claimed in the moment before it read its tombstone, and was
    killed: its heartbeat outlives it. The other host must not take that heartbeat for a
    live worker's (the item sat in claimed/ for ever); a live host's claim stays."""
    from harness import config
    from harness.liveness.heartbeat import HeartbeatWriter
    from harness.pool.coordinator import Coordinator
    from tests.conftest import FakeClock

    queue = Queue(ws.queue_dir)
    for item_id in ("held-by-dead", "held-by-live"):
        queue.enqueue({"id": item_id, "command": "true"})
    claims = {c.id: c for c in (queue.claim(), queue.claim())}
    for host, gen in (("hostA", "gen-A"), ("hostC", "gen-C")):
        HeartbeatWriter(hosts.path_of(ws, host), ws.tmp_dir, generation=gen, host_id=host,
                        pid=1, start_time=0).beat()
    hosts.bury(ws, "hostA", "gen-A", by="hostC")
    for worker, gen, item in (("hostA.w1", "gen-A", "held-by-dead"),
                              ("hostC.w1", "gen-C", "held-by-live")):
        HeartbeatWriter(ws.heartbeat_file(worker), ws.tmp_dir, worker=worker, pid=1,
                        host_generation=gen, item=claims[item].path.name).beat()
    monkeypatch.setenv(hosts.HOST_ID_ENV, "hostB")
    clock = FakeClock(100.0)
    coord = Coordinator(ws, config.load(ws.config_file, {"run": {"agents": 0}}),
                        forever=True, clock=clock)
    for _ in range(2):
        coord.revoke_orphans(heartbeat.read_all(ws.heartbeats_dir))
        clock.advance(coord.cfg.run.orphan_grace + 0.1)
    pending = [names.parse(e).id for e in names.entries(ws.queue_dir / "pending")]
    claimed = [names.parse(e).id for e in names.entries(ws.queue_dir / "claimed")]
    assert (pending, claimed) == (["held-by-dead"], ["held-by-live"])
    assert not ws.heartbeat_file("hostA.w1").exists()
    assert ws.heartbeat_file("hostC.w1").exists()


def test_a_second_coordinator_with_the_same_host_id_is_refused(ws):
    a = start_host(ws, "hostA", "--agents", "1", "--forever")
    try:
        wait_for(lambda: (ws.hosts_dir / "hostA.json").exists(), 30, "host A to start")
        twin = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                               "run", "--agents", "1"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, hosts.HOST_ID_ENV: "hostA"})
        assert twin.returncode == 2 and "hostA" in twin.stderr, twin.stderr
    finally:
        kill_all(ws, a)


def test_a_lease_written_by_someone_else_refuses_the_host_id(tmp_path):
    """Where the host lock is lost (two NFS clients with one hostname), the lease's moving
    counter is the proof that another coordinator owns the id."""
    import threading

    from harness.pool.hostwatch import DuplicateHost, HostWatch

    ws = Workspace.at(tmp_path, host="twin")
    ws.make_dirs()
    other = HostWatch(ws, 60.0, lambda *a, **k: None)
    other.start()
    stop = threading.Event()
    beating = threading.Thread(target=lambda: [other.writer.beat() for _ in iter(
        lambda: stop.wait(0.05), True)])
    beating.start()
    try:
        with pytest.raises(DuplicateHost, match="twin"):
            HostWatch(ws, 60.0, lambda *a, **k: None).start()
    finally:
        stop.set()
        beating.join()


def test_a_live_host_on_another_machine_with_this_hostname_refuses_the_start(tmp_path):
    """Two NFS clients with one hostname share one NFSv4 client identity (the server then
    drops the first one's locks): a second machine with this hostname is refused even
    with its own host id; another host id on this machine (same boot) is not."""
    import socket
    import threading

    from harness.liveness import heartbeat
    from harness.liveness.process import boot_id
    from harness.pool.hostwatch import DuplicateHost, HostWatch

    ws = Workspace.at(tmp_path, host="here")
    ws.make_dirs()

    def live_lease(host: str, boot: str) -> None:
        writer = heartbeat.HeartbeatWriter(
            hosts.path_of(ws, host), ws.tmp_dir, host=socket.gethostname(), boot_id=boot,
            pid=1, start_time=0.0, host_id=host, generation="g1")
        writer.beat()
        threads.append(threading.Thread(target=lambda: [writer.beat() for _ in iter(
            lambda: stop.wait(0.05), True)]))
        threads[-1].start()

    stop, threads = threading.Event(), []
    try:
        live_lease("neighbour", boot_id())
        HostWatch(ws, 60.0, lambda *a, **k: None).start()  # this machine: allowed
        live_lease("there", "another-machine")
        with pytest.raises(DuplicateHost, match="host name .* is in use by live host 'there'"):
            HostWatch(Workspace.at(tmp_path, host="also-here"), 60.0,
                      lambda *a, **k: None).start()
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_a_silent_lease_of_this_host_id_from_elsewhere_is_waited_out_and_then_fenced(tmp_path):
    """Found in the NFS lab: a 1.5 s watch let a second coordinator with one host id run
    next to the first, whose NFS state the server had just dropped (it wrote nothing for
    longer than that). A matching lease from another machine must now stand still for
    host_stale_after; if its coordinator wakes after that, it finds a newer generation in
    its lease and stops (HostFenced) before it records anything."""
    from harness.pool.hostwatch import HostFenced, HostWatch

    seen = []
    first = HostWatch(Workspace.at(tmp_path, host="twin"), 1.0, lambda *a, **k: None)
    first.ws.make_dirs()
    first.start()
    first.writer.beat(boot_id="another-machine")  # as if written from elsewhere, then frozen
    second = HostWatch(Workspace.at(tmp_path, host="twin"), 1.0,
                       lambda kind, **f: seen.append((kind, f)))
    second.start()
    assert [k for k, _ in seen] == ["host-lease-wait"] and seen[0][1]["hosts"] == ["twin"]
    second.check()
    with pytest.raises(HostFenced, match="a newer coordinator of host id twin"):
        first.check()
    with pytest.raises(HostFenced):
        first.tick()

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
40 22 0:40 / /mnt/nolock rw,relatime - nfs4 srv:/x rw,vers=4.2,local_lock=all,addr=10.0.0.1
41 22 0:41 / /mnt/v3 rw,relatime - nfs srv:/y rw,vers=3,addr=10.0.0.1
42 22 0:42 / /mnt/v40 rw,relatime - nfs4 srv:/z rw,vers=4.0,addr=10.0.0.1
43 22 0:43 / /mnt/good rw,relatime - nfs4 srv:/w rw,vers=4.2,local_lock=none,addr=10.0.0.1
44 22 0:44 / /mnt/smb rw,relatime - cifs //srv/share rw,vers=3.0
45 22 0:45 / /mnt/v3nolock rw,relatime - nfs srv:/v rw,vers=3,nolock,addr=10.0.0.1
"""


@pytest.mark.parametrize("path, refused", [
    ("/work/x", None), ("/mnt/nolock/q", "per-host locks"), ("/mnt/v3/q", "NFSv4.1"),
    ("/mnt/v40/q", "NFSv4.1"), ("/mnt/good/q", None), ("/mnt/smb/q", "not a filesystem known"),
    ("/mnt/v3nolock/q", "per-host locks")])
def test_filesystems_that_do_not_hold_across_hosts_are_refused(tmp_path, path, refused):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    mount = mount_of(path, str(info))
    assert isinstance(mount, Mount)
    problem = multi_host_problem(mount)
    assert (problem is None) if refused is None else (refused in problem), problem


def test_this_machines_workspace_filesystem_passes(tmp_path):
    assert multi_host_problem(mount_of(tmp_path)) is None


def test_run_refuses_a_bad_host_id(ws):
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, hosts.HOST_ID_ENV: "a/b"})
    assert bad.returncode == 2 and "HARNESS_HOST_ID" in bad.stderr, bad.stderr


def test_hosts_ids_default_to_hostname_and_boot_id():
    ident = hosts.host_id({})
    assert "." not in ident and len(ident.rsplit("-", 1)[1]) == 8
    assert hosts.host_id({hosts.HOST_ID_ENV: "rack2-node7"}) == "rack2-node7"


def test_workspace_names_are_per_host(tmp_path):
    ws = Workspace.at(tmp_path, host="hostA")
    assert ws.worker_name(3) == "hostA.w3"
    assert ws.events_file == tmp_path.resolve() / "state" / "events" / "hostA.jsonl"
    assert ws.coordinator_lock.name == "hostA.lock" and ws.run_file.name == "hostA.run.json"
    single = Workspace.at(tmp_path)
    assert single.worker_name(3) == "w3" and single.events_file.name == "events.jsonl"
    assert Path(single.coordinator_lock).name == "coordinator.lock"


def test_a_host_buried_while_its_tick_runs_stops_at_the_end_of_that_tick(ws, monkeypatch):
    """Found in the NFS lab (bench/nfs_lab.py freeze): a guest frozen in the middle of a
    tick, after the tick's fence check, woke after its burial, finished that tick (a
    worker-start-timeout, a spawn), found the batch finished and exited 0. The fence is
    checked again at the end of every tick: exit 3, host-fenced, no 'batch finished'."""
    from harness import config
    from harness.pool.coordinator import EXIT_FENCED, Coordinator

    monkeypatch.setenv(hosts.HOST_ID_ENV, "hostA")
    cfg = config.load(ws.config_file, {"run": {"agents": 0}})
    coord = Coordinator(ws, cfg, forever=False)
    coord.start()
    real_promote = coord.promote

    def promote_then_buried() -> None:  # as if frozen here while host B buried this host
        real_promote()
        hosts.bury(coord.ws, "hostA", coord.hostwatch.generation, by="hostB")

    coord.promote = promote_then_buried
    assert coord.run() == EXIT_FENCED
    evs = [e for e in events(ws) if e.get("source") == "coordinator"]
    assert [e.get("by") for e in evs if e["event"] == "host-fenced"] == ["hostB"]
    assert not [e for e in evs if e["event"] == "shutdown"]


def test_a_host_that_stood_still_itself_buries_no_one(tmp_path):
    """Every host blocked alike (the NFS server away): when the ticks resume, the other
    host's counter did not move for the whole gap, yet it is not buried."""
    from harness.pool.hostwatch import HostWatch
    from tests.conftest import FakeClock

    clock = FakeClock(100.0)
    quiet = []
    a = HostWatch(Workspace.at(tmp_path, host="hostA"), 10.0, lambda *e, **f: quiet.append(e),
                  clock)
    b = HostWatch(Workspace.at(tmp_path, host="hostB"), 10.0, lambda *e, **f: None, clock)
    a.ws.make_dirs()
    a.start()
    b.start()
    for _ in range(3):
        clock.advance(1.0)
        a.tick()
        b.tick()
    clock.advance(60.0)  # both stood still
    assert a.tick() == [] and b.tick() == []
    assert quiet == [("host-stalled",)]  # said, so that a slow failover has its reason
    for _ in range(12):  # hostB ticks again, hostA watches: fine
        clock.advance(1.0)
        b.tick()
        assert a.tick() == []
    for _ in range(12):  # now hostB really stops: buried after 10 s
        clock.advance(1.0)
        buried = a.tick()
        if buried:
            break
    assert [lease.host for lease in buried] == ["hostB"]
    assert not (tmp_path / "state" / "hosts" / "hostA.dead").exists()
