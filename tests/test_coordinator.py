"""Coordinator and workers as real processes: kills, zombies, restarts, shutdown."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from harness.queue import names
from harness.queue.invariants import check
from harness.queue.core import Queue
from tests.procs import queue_size, scaled
from tests.wsutil import (events, gone, heartbeat_of, kill_all, live_recorded, make_workspace,
                          start_coordinator, wait_for)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ws(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    yield ws
    kill_all(ws)


def busy_worker(ws, item_id):
    def find():
        for w in (f"w{i}" for i in range(1, 9)):
            hb = heartbeat_of(ws, w)
            if hb and hb.get("item_id") == item_id and hb.get("agent_pid"):
                return hb
        return None
    return find


def names_in(ws, state):
    return [names.parse(e) for e in names.entries(ws.queue_dir / state)]


def finish(proc, timeout=60):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def test_sigkilled_worker_is_replaced_and_its_item_requeued(ws):
    release = ws.root / "release"
    q = Queue(ws.queue_dir)
    q.enqueue({"id": "blocker", "command": f"while [ ! -f {release} ]; do sleep 0.02; done"})
    # stale_after is long: death must be noticed through the worker's lock, not staleness.
    (ws.root / "harness.toml").write_text(
        (ws.root / "harness.toml").read_text().replace("stale_after = 2.0", "stale_after = 60"))
    coord = start_coordinator(ws, "--agents", "2")
    try:
        hb = wait_for(busy_worker(ws, "blocker"), 20, "a worker running the blocker")
        os.kill(hb["pid"], signal.SIGKILL)
        requeued = wait_for(lambda: [n for n in names_in(ws, "pending") + names_in(ws, "claimed")
                                     if n.attempt == 2], 5, "the item back at attempt 2")
        assert requeued[0].id == "blocker"
        wait_for(lambda: (heartbeat_of(ws, hb["worker"]) or {}).get("generation")
                 not in (None, hb["generation"]), 5, "a replacement worker, new generation")
        wait_for(lambda: gone(hb["agent_pid"]), 5, "the dead worker's agent to be killed")
        release.touch()
        assert finish(coord) == 0
    finally:
        kill_all(ws, coord)
    done = names_in(ws, "done")
    assert [(n.id, n.attempt) for n in done] == [("blocker", 2)]
    assert check(ws.queue_dir, enqueued=["blocker"], expect_finished=True) == []
    assert live_recorded(ws) == []


def test_restarted_coordinator_adopts_live_workers(ws):
    release = ws.root / "release"
    q = Queue(ws.queue_dir)
    ids = [f"item-{i}" for i in range(9)]
    for item_id in ids:
        q.enqueue({"id": item_id, "command": f"while [ ! -f {release} ]; do sleep 0.02; done"})
    coord = start_coordinator(ws, "--agents", "3")
    try:
        wait_for(lambda: len(names_in(ws, "claimed")) == 3, 20, "three busy workers")
        pids = {w: heartbeat_of(ws, w)["pid"] for w in ("w1", "w2", "w3")}
        os.killpg(coord.pid, signal.SIGKILL)
        coord.wait()
        assert all(psutil.pid_exists(p) for p in pids.values())
        coord = start_coordinator(ws, "--agents", "3")
        wait_for(lambda: sum(e["event"] == "worker-adopted" for e in events(ws)) == 3, 10,
                 "three adopted workers")
        adopted = {e["worker"]: e["pid"] for e in events(ws) if e["event"] == "worker-adopted"}
        assert adopted == pids
        release.touch()
        assert finish(coord) == 0
    finally:
        kill_all(ws, coord)
    assert sorted(n.id for n in names_in(ws, "done")) == ids
    assert all(n.attempt == 1 for n in names_in(ws, "done")), "nothing was reclaimed"
    assert not any(e["event"] == "revoke" for e in events(ws))
    assert check(ws.queue_dir, enqueued=ids, expect_finished=True) == []
    assert live_recorded(ws) == []


def test_stopped_worker_is_fenced_when_it_wakes(ws):
    q = Queue(ws.queue_dir)
    # Attempt 1 hangs; any later attempt succeeds.
    q.enqueue({"id": "zombie", "command":
               'if [ "$HARNESS_ATTEMPT" = 1 ]; then sleep 600; fi; echo ok > result.txt'})
    coord = start_coordinator(ws, "--agents", "2", "--stale-after", "1")
    try:
        hb = wait_for(busy_worker(ws, "zombie"), 20, "a worker running attempt 1")
        os.kill(hb["pid"], signal.SIGSTOP)
        wait_for(lambda: [n for n in names_in(ws, "done") if n.attempt == 2], 20,
                 "attempt 2 done by the other worker")
        os.kill(hb["pid"], signal.SIGCONT)
        result1 = ws.attempt_dir("zombie", 1) / "result.json"
        wait_for(result1.exists, 20, "the woken worker to record its attempt")
        assert finish(coord) == 0
    finally:
        kill_all(ws, coord)
    import orjson

    r1 = orjson.loads(result1.read_bytes())
    r2 = orjson.loads((ws.attempt_dir("zombie", 2) / "result.json").read_bytes())
    assert r1["reason"] == "fenced" and r1["queue"] == "none"
    assert r2["reason"] == "succeeded" and r2["queue"] == "done"
    branch_sha = subprocess.run(["git", "rev-parse", "harness/zombie"], cwd=ws.root,
                                capture_output=True, text=True, check=True).stdout.strip()
    assert branch_sha == r2["commit"]
    assert [(n.id, n.attempt) for n in names_in(ws, "done")] == [("zombie", 2)]
    assert check(ws.queue_dir, enqueued=["zombie"], revoked=[("zombie", 1)],
                 expect_finished=True) == []


def test_graceful_shutdown_leaves_no_process_and_no_claim(ws):
    q = Queue(ws.queue_dir)
    for i in range(4):
        q.enqueue({"id": f"long-{i}", "command": "sleep 600"})
    coord = start_coordinator(ws, "--agents", "3")
    try:
        wait_for(lambda: all((heartbeat_of(ws, w) or {}).get("agent_pid")
                             for w in ("w1", "w2", "w3")), 20, "three running agents")
        agents = [heartbeat_of(ws, w)["agent_pid"] for w in ("w1", "w2", "w3")]
        coord.send_signal(signal.SIGTERM)
        code = finish(coord, 30)
    finally:
        kill_all(ws, coord)
    assert code == 128 + signal.SIGTERM
    assert names_in(ws, "claimed") == []
    assert sorted(n.id for n in names_in(ws, "pending")) == [f"long-{i}" for i in range(4)]
    assert all(gone(p) for p in agents)
    assert live_recorded(ws) == []
    assert check(ws.queue_dir) == []


def test_exit_codes_for_failed_items_and_bad_config(ws):
    Queue(ws.queue_dir).enqueue({"id": "broken", "command": "exit 7", "max_attempts": 1})
    Queue(ws.queue_dir).enqueue({"id": "fine", "command": "true"})
    coord = start_coordinator(ws, "--agents", "2")
    assert finish(coord) == 1
    reason = (ws.queue_dir / "failed" / (str(names_in(ws, "failed")[0]) + ".reason")).read_text()
    assert "exited with status 7" in reason
    # run prints a line per attempt as it ends, then the summary.
    out = (ws.root / "coordinator.out").read_text()
    assert re.search(r"^\d\d:\d\d:\d\d w\d fine~1 succeeded -> done: ", out, re.M), out
    assert re.search(r"^\d\d:\d\d:\d\d w\d broken~1 failed -> failed: agent exited with"
                     r" status 7$", out, re.M), out
    assert out.index("broken~1 failed") < out.index("summary: 1 done, 1 failed")
    (ws.root / "harness.toml").write_text("[run]\nagnets = 3\n")
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert "harness.toml" in bad.stderr and "run.agnets" in bad.stderr


def test_files_dropped_by_hand_during_a_run_are_taken_in_and_the_batch_ends(ws, tmp_path):
    release = tmp_path / "release"
    Queue(ws.queue_dir).enqueue({"id": "holds-the-run",
                                 "command": f"while [ ! -e {release} ]; do sleep 0.05; done"})
    coord = start_coordinator(ws, "--agents", "2")
    try:
        wait_for(lambda: names_in(ws, "claimed"), 30, "the first item to be claimed")
        settled = time.time() - 10  # as if written a while ago: taken in at the next scan
        for name, text in (("dropped.json", '{"id": "dropped", "command": "true"}'),
                           ("broken.json", "{broken")):
            path = ws.queue_dir / "pending" / name
            path.write_text(text)
            os.utime(path, (settled, settled))
        wait_for(lambda: "dropped" in {n.id for n in names_in(ws, "done")}, 30,
                 "the dropped item to be done")
        assert (ws.queue_dir / "failed" / "broken.json.reason").is_file()
        release.touch()
        # A dead-lettered file of this run makes the run's exit code 1.
        assert finish(coord) == 1
    finally:
        release.touch()
    assert names.entries(ws.queue_dir / "pending") == []
    out = (ws.root / "coordinator.out").read_text()
    assert "hand-dropped file: enqueued hand-dropped pending/dropped.json" in out
    assert "hand-dropped file: moved pending/broken.json to failed/broken.json" in out


def test_a_run_with_nothing_to_do_says_so_and_exits_0(ws):
    q = Queue(ws.queue_dir, max_attempts=1)
    q.enqueue({"id": "earlier"})
    q.claim().fail("from an earlier run")
    assert finish(start_coordinator(ws, "--agents", "1")) == 0
    out = (ws.root / "coordinator.out").read_text()
    assert "nothing to run: no item is pending, claimed or waiting" in out
    assert "summary: 0 done, 0 failed this run" in out  # the earlier failure is not this run's


def test_second_coordinator_refuses_naming_the_first(ws):
    coord = start_coordinator(ws, "--agents", "1", "--forever")
    try:
        wait_for(lambda: heartbeat_of(ws, "w1"), 20, "the first coordinator's worker")
        second = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                                 "run", "--agents", "1"], capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 2
        assert f"pid {coord.pid}" in second.stderr
        coord.send_signal(signal.SIGINT)
        assert finish(coord, 30) == 128 + signal.SIGINT
    finally:
        kill_all(ws, coord)
    assert live_recorded(ws) == []


def _process_of(hb: dict | None) -> psutil.Process | None:
    """The worker a heartbeat names, if that very process (pid and start time) still runs:
    it may have exited, and its pid been reused, since the heartbeat was written."""
    if not hb:
        return None
    try:
        proc = psutil.Process(hb["pid"])
    except psutil.NoSuchProcess:
        return None
    return proc if abs(proc.create_time() - hb["start_time"]) < 0.01 else None


def _send(proc: psutil.Process, sig: int) -> bool:
    """Signal ``proc`` unless it is gone (psutil refuses a reused pid)."""
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return False
    return True


def cli(ws, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ws.root,
                          capture_output=True, text=True, timeout=600)


def enqueue_backlog(ws, n: int) -> list[str]:
    """``n`` low-priority shell items behind the test's own (a JSONL file, streamed)."""
    ids = [f"b{i:06d}" for i in range(n)]
    if ids:
        path = ws.root / "backlog.jsonl"
        path.write_text("".join(f'{{"id": "{i}", "priority": 9, "command": "true"}}\n'
                                for i in ids))
        done = cli(ws, "enqueue", str(path))
        assert done.returncode == 0, done.stderr
    return ids


@pytest.mark.timeout(scaled(120, 150))
def test_chaos_kills_and_stops_lose_nothing(tmp_path):
    """Random SIGKILLs of workers and the coordinator, SIGSTOP/SIGCONT of workers. Under
    bench/backlog_chaos.py (HARNESS_TEST_BACKLOG=100000) the 150 items run while the
    rest of a queue that size waits behind them; what is left of it is then cancelled."""
    ws = make_workspace(tmp_path / "ws", stale_after=1.0, stale_kill_grace=1.0)
    q = Queue(ws.queue_dir)
    ids = [f"c{i:03d}" for i in range(150)]
    for item_id in ids:
        q.enqueue({"id": item_id, "command": f"echo {item_id} > out.txt"})
    backlog = enqueue_backlog(ws, queue_size(len(ids)) - len(ids))
    wanted = set(ids)
    rng = random.Random(7)
    coord = start_coordinator(ws, "--agents", "8")
    stopped: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + scaled(90, len(ids))
        while time.monotonic() < deadline and \
                len({n.id for n in names_in(ws, "done")} & wanted) < len(ids):
            time.sleep(rng.uniform(0.1, 0.4))
            victim = _process_of(heartbeat_of(ws, f"w{rng.randint(1, 8)}"))
            action = rng.random()
            if action < 0.1 and coord.poll() is None:
                os.killpg(coord.pid, signal.SIGKILL)
                coord.wait()
            elif action < 0.5 and victim:
                _send(victim, signal.SIGKILL)
            elif action < 0.7 and victim and _send(victim, signal.SIGSTOP):
                stopped.append(victim)
            elif stopped:
                _send(stopped.pop(0), signal.SIGCONT)
            if coord.poll() is not None:
                coord = start_coordinator(ws, "--agents", "8")
        for proc in stopped:
            _send(proc, signal.SIGCONT)
        if backlog:
            cancelled = cli(ws, "cancel", "--pending")
            assert cancelled.returncode == 0, cancelled.stderr
        if coord.poll() is not None:
            coord = start_coordinator(ws, "--agents", "8")
        assert finish(coord, scaled(90, len(ids))) in (0, 1)
    finally:
        kill_all(ws, coord)
    everything = ids + backlog
    assert check(ws.queue_dir, enqueued=everything, expect_finished=True) == []
    assert len(names_in(ws, "done")) + len(names_in(ws, "failed")) == len(everything)
    assert live_recorded(ws) == []


def test_orphaned_claim_is_revoked_after_the_grace_and_then_done(ws):
    q = Queue(ws.queue_dir)
    name = q.enqueue({"id": "orphan", "command": "true"})
    # A claimant that died right after its claim rename, before naming it anywhere.
    os.rename(ws.queue_dir / "pending" / str(name), ws.queue_dir / "claimed" / str(name))
    coord = start_coordinator(ws, "--agents", "1")
    try:
        assert finish(coord) == 0
    finally:
        kill_all(ws, coord)
    revokes = [e for e in events(ws) if e["event"] == "revoke"]
    assert [(e["why"], e["outcome"]) for e in revokes] == [("orphaned", "retry")]
    assert [(n.id, n.attempt) for n in names_in(ws, "done")] == [("orphan", 2)]


def test_scale_changes_the_pool_live(ws):
    coord = start_coordinator(ws, "--agents", "1", "--forever")
    try:
        wait_for(lambda: heartbeat_of(ws, "w1"), 20, "one worker")
        ws.desired_workers_file.write_text("3\n")
        wait_for(lambda: all(heartbeat_of(ws, w) for w in ("w1", "w2", "w3")), 20,
                 "three workers after scale 3")
        ws.desired_workers_file.write_text("1\n")
        wait_for(lambda: not heartbeat_of(ws, "w2") and not heartbeat_of(ws, "w3"), 20,
                 "two workers retired after scale 1")
        assert heartbeat_of(ws, "w1") is not None
        coord.send_signal(signal.SIGTERM)
        finish(coord, 30)
    finally:
        kill_all(ws, coord)
    assert sum(e["event"] == "worker-retire" for e in events(ws)) == 2
    assert live_recorded(ws) == []


def test_circuit_breaker_pauses_after_consecutive_failures(tmp_path):
    ws = make_workspace(tmp_path / "ws", max_attempts=1)
    (ws.root / "harness.toml").write_text((ws.root / "harness.toml").read_text().replace(
        "max_consecutive_failures = 0", "max_consecutive_failures = 2"))
    q = Queue(ws.queue_dir)
    for i in range(5):
        q.enqueue({"id": f"bad-{i}", "command": "sleep 0.3; exit 3"})
    coord = start_coordinator(ws, "--agents", "1", "--forever")
    try:
        wait_for(lambda: "circuit breaker" in (ws.interrupt_reason() or ""), 30,
                 "the circuit breaker to pause the pool")
        failed_then = len(names_in(ws, "failed"))
        # The pause is written first, the event right after it (in the same tick).
        wait_for(lambda: any(e["event"] == "circuit-open" for e in events(ws)), 10,
                 "the circuit-open event")
        assert finish_after_signal(coord) == 128 + signal.SIGTERM
    finally:
        kill_all(ws, coord)
    assert 2 <= failed_then <= 3, "pool paused after two failures (one may have been running)"
    assert len(names_in(ws, "pending")) >= 2, "the rest was not burnt"


def finish_after_signal(coord):
    coord.send_signal(signal.SIGTERM)
    return finish(coord, 30)


def test_a_batch_run_waits_for_an_item_that_ended_during_the_integration_step(tmp_path):
    """An attempt can start and end while one tick's integration step runs (a push takes
    longer than an attempt): the run must read the heartbeats, the events and the queue
    afresh before it ends, or that item is left undelivered with exit 0."""
    from harness import config
    from harness.pool.coordinator import Coordinator
    from tests.remotes import git as git_

    ws = make_workspace(tmp_path / "ws")
    cfg = config.load(ws.config_file, {"run": {"agents": 0}, "git": {"integrate": "merge"}})
    coord = Coordinator(ws, cfg, forever=False)
    coord.start()
    try:
        queue = coord.queue
        for item_id in ("first", "second"):
            queue.enqueue({"id": item_id, "command": "true"})

        def finish(item_id):
            claim = queue.claim()
            assert claim.id == item_id
            git_(ws.root, "branch", f"harness/{item_id}", "main")
            claim.complete()
            ws.log_event("attempt-end", worker="w1", item=item_id, attempt=1,
                         reason="succeeded", queue="done", metrics={})

        finish("first")
        real = coord.merges.mode.integrate

        def integrate_while_second_ends(item_id):
            if item_id == "first":
                finish("second")  # a whole attempt, inside this tick's integration step
            return real(item_id)

        coord.merges.mode.integrate = integrate_while_second_ends
        coord.tick()
        assert not coord.finished(), "the run would end with 'second' never integrated"
        coord.tick()
        assert coord.finished()
        merged = [e["item"] for e in events(ws) if e["event"] == "merged"]
        assert merged == ["first", "second"]
    finally:
        coord.pool.stop_all()
        coord._finish()


def test_dependency_states_are_listed_at_a_pace_not_every_tick(ws):
    """Items waiting on others made every tick list done/ and failed/ whole (a third of a
    second at a million items); the listing is paced by its cost, fresh when asked."""
    from harness import config
    from harness.pool.coordinator import Coordinator
    from tests.conftest import FakeClock

    clock = FakeClock(100.0)
    coord = Coordinator(ws, config.load(ws.config_file, {"run": {"agents": 0}}), clock=clock)
    scans = []

    def listing() -> dict[str, str]:
        scans.append(clock.now)
        clock.advance(0.01)  # what the listing costs
        return {"a": "done"}

    coord.queue.terminal_states = listing
    assert coord._terminal_states(False) == {"a": "done"} and len(scans) == 1
    clock.advance(0.1)
    assert coord._terminal_states(False) == {"a": "done"} and len(scans) == 1  # not due
    assert coord._terminal_states(True) and len(scans) == 2  # asked fresh
    clock.advance(coord.terminal_scan.share * 0.01 + 0.01)
    coord._terminal_states(False)
    assert len(scans) == 3
