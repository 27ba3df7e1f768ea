"""The worker slots of one host: start, watch, bury, restart, scale, stop.

A slot (``w1`` .. ``wN``, ``<host>.wN`` with several hosts) outlives the worker
processes that fill it. Each tick :meth:`Slots.check` judges every running
slot: dead (reaped, or its lock free), never started (no heartbeat within
``start_timeout``), stale (heartbeat counter unchanged for ``stale_after`` on
this process's monotonic clock) or alive. A dead or stale worker's claim goes
back to the queue and its slot restarts, with backoff if it keeps dying.
:meth:`Slots.scale` applies ``state/desired-workers`` and the memory floor;
:meth:`Slots.stop_all` is the graceful shutdown.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from harness.agents import runner
from harness.config import Config
from harness.liveness import heartbeat, hosts
from harness.liveness.process import ProcessIdentity, lock_is_held
from harness.paths import is_unsafe, user_umask
from harness.pool.worker import EXIT_SLOT_UNSAFE
from harness.queue.core import Queue
from harness.workspace import Workspace

QUICK_DEATH = 10.0  # a worker that dies sooner than this after start counts as crash-looping


@dataclass
class Slot:
    """One worker position, ``w1`` .. ``wN``; outlives the processes that fill it."""

    id: str
    generation: str = ""
    proc: subprocess.Popen[bytes] | None = None
    identity: ProcessIdentity | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0
    retiring: bool = False
    refused: str | None = None  # why its worktree path may not be used (harness.paths)

    @property
    def running(self) -> bool:
        return bool(self.generation)


class Slots:
    """The slots of this host and the processes in them."""

    def __init__(self, ws: Workspace, cfg: Config, queue: Queue, event: Callable[..., None],
                 clock: Callable[[], float], host_args: Callable[[], list[str]],
                 stop_requested: Callable[[], str | None]) -> None:
        self.ws, self.cfg, self.queue, self.event, self.clock = ws, cfg, queue, event, clock
        self.host_args, self.stop_requested = host_args, stop_requested
        self.slots: dict[str, Slot] = {}
        self.staleness = heartbeat.Staleness(clock)
        self.doomed: list[tuple[ProcessIdentity, float]] = []
        self.memory_held = False

    def check(self, hbs: dict[str, dict[str, Any]]) -> None:
        for slot in list(self.slots.values()):
            self.check_slot(slot, hbs.get(slot.id))

    def running(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.running)

    def worker_pids(self) -> set[int]:
        return {slot.proc.pid for slot in self.slots.values() if slot.proc is not None}

    def mine(self, worker: str) -> bool:
        """A worker of this host: ``<host>.w<N>`` with a host, ``w<N>`` without."""
        if self.ws.host:
            return bool(hosts.workers_of(self.ws.host, [worker]))
        return worker[:1] == "w" and worker[1:].isdigit()

    def adopt(self) -> None:
        for worker, hb in heartbeat.read_all(self.ws.heartbeats_dir).items():
            if not self.mine(worker):
                continue
            ident = ProcessIdentity.from_record(hb)
            if lock_is_held(self.ws.worker_lock(worker)) and ident and ident.is_running() is not False:
                self.slots[worker] = Slot(worker, str(hb.get("generation")), None, ident,
                                          self.clock())
                self.event("worker-adopted", worker=worker, pid=ident.pid)
            else:
                self.bury(worker, hb, "dead before this coordinator started")

    def check_slot(self, slot: Slot, hb: dict[str, Any] | None) -> None:
        if not slot.running:
            return
        now = self.clock()
        mine = hb is not None and str(hb.get("generation")) == slot.generation
        if self._is_dead(slot, mine):
            if slot.proc is not None and slot.proc.returncode == EXIT_SLOT_UNSAFE:
                self.bury(slot.id, hb, "refused its slot (see slot-refused)", count=False,
                           planned=True)
                slot.started = now - QUICK_DEATH  # a refusal is not a crash loop
            elif slot.retiring:
                self.bury(slot.id, hb, "retired by scale-down", planned=True)
            else:
                self.bury(slot.id, hb, "worker died")
            self._reset(slot, now)
        elif not mine:
            if now - slot.started > self.cfg.run.start_timeout:
                self.event("worker-start-timeout", worker=slot.id)
                if slot.proc is not None:
                    runner.kill_group(slot.proc.pid, grace=0)
                    slot.proc.wait()
                self.bury(slot.id, hb, "worker never sent a heartbeat")
                self._reset(slot, now)
        elif self.staleness.observe(slot.id, slot.generation, hb.get("counter")) > \
                self.cfg.run.stale_after:
            self.event("worker-stale", worker=slot.id, item=hb.get("item"),
                       stale_after=self.cfg.run.stale_after)
            self._stop_stale(hb)
            self.bury(slot.id, hb, f"worker stale for {self.cfg.run.stale_after}s")
            self._reset(slot, now)

    def _is_dead(self, slot: Slot, has_heartbeat: bool) -> bool:
        """Reaped, or its lock is free (a child that has not locked yet is still starting)."""
        if slot.proc is not None and slot.proc.poll() is not None:
            return True
        if lock_is_held(self.ws.worker_lock(slot.id)):
            return False
        return slot.proc is None or has_heartbeat

    def _stop_stale(self, hb: dict[str, Any]) -> None:
        """Kill a stale local worker's agent now; TERM the worker, KILL it after a grace.

        The TERM lets a worker that was only paused (SIGSTOP, swapped out) wake,
        find its claim fenced, record nothing, and exit; the KILL that follows
        ``stale_kill_grace`` later ends one that is truly hung. A worker on
        another host cannot be signalled: fencing alone protects the queue.
        """
        ident = ProcessIdentity.from_record(hb)
        if ident is None or not ident.is_local():
            return
        if hb.get("agent_pid"):
            runner.kill_group(int(hb["agent_pid"]), grace=0, start_time=hb.get("agent_start"))
        try:
            os.kill(ident.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self.doomed.append((ident, self.clock() + self.cfg.run.stale_kill_grace))

    def reap_doomed(self) -> None:
        now, keep = self.clock(), []
        for ident, deadline in self.doomed:
            if ident.is_running() is False:
                continue
            if now >= deadline:
                runner.kill_group(ident.pid, grace=0, start_time=ident.start_time)
                self.event("worker-killed", pid=ident.pid, why="still alive after stale_kill_grace")
            else:
                keep.append((ident, deadline))
        self.doomed = keep

    def bury(self, worker: str, hb: dict[str, Any] | None, why: str, count: bool = True,
              planned: bool = False) -> None:
        """Return a dead worker's claim to the queue and remove its heartbeat.

        ``planned``: the coordinator stopped it (scale-down, shutdown); logged as
        ``worker-retired``, not ``worker-dead``, so no one reads it as a crash.
        """
        if hb and hb.get("agent_pid"):
            runner.kill_group(int(hb["agent_pid"]), grace=0, start_time=hb.get("agent_start"))
        item = hb.get("item") if hb else None
        if item:
            outcome = self.queue.revoke(item, why, count=count)
            self.event("revoke", worker=worker, item=item, outcome=outcome, why=why)
        self.ws.heartbeat_file(worker).unlink(missing_ok=True)
        self.staleness.forget(worker)
        self.event("worker-retired" if planned else "worker-dead", worker=worker, why=why)

    def _reset(self, slot: Slot, now: float) -> None:
        quick = now - slot.started < QUICK_DEATH
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
        delay = min(self.cfg.run.restart_backoff_max, 0.5 * 2 ** slot.quick_deaths) if quick else 0
        slot.generation, slot.proc, slot.identity, slot.restart_at = "", None, None, now + delay
        if slot.retiring:
            del self.slots[slot.id]

    def desired_workers(self) -> int:
        try:
            return max(0, int(self.ws.desired_workers_file.read_text().strip()))
        except (FileNotFoundError, ValueError):
            return self.cfg.run.agents

    def scale(self) -> None:
        want = self.desired_workers()
        ids = [self.ws.worker_name(i) for i in range(1, want + 1)]
        for worker, slot in self.slots.items():
            if worker not in ids and slot.running and not slot.retiring:
                slot.retiring = True
                self.signal(slot, signal.SIGTERM)
                self.event("worker-retire", worker=worker)
        for worker in ids:
            slot = self.slots.setdefault(worker, Slot(worker))
            slot.retiring = False
            if (not slot.running and self.clock() >= slot.restart_at
                    and not lock_is_held(self.ws.worker_lock(worker)) and self._slot_usable(slot)
                    and self._memory_ok()):
                self.spawn(slot)
        for worker in [w for w, s in self.slots.items() if s.retiring and not s.running]:
            del self.slots[worker]

    def _slot_usable(self, slot: Slot) -> bool:
        """No worker starts in a slot whose worktree path is a symlink or outside the
        workspace; the refusal is logged once per reason, and lifted when the path is fixed."""
        why = is_unsafe(self.ws.root, self.ws.worktree(slot.id))
        if why != slot.refused:
            if why is not None:
                self.event("slot-refused", worker=slot.id, path=str(self.ws.worktree(slot.id)),
                           why=why)
            else:
                self.event("slot-usable", worker=slot.id)
            slot.refused = why
        return why is None

    def _memory_ok(self) -> bool:
        free_mb = psutil.virtual_memory().available // 2**20
        ok = free_mb >= self.cfg.run.memory_floor_mb
        if ok == self.memory_held:
            self.memory_held = not ok
            self.event("memory-floor", held=not ok, free_mb=free_mb,
                       floor_mb=self.cfg.run.memory_floor_mb)
        return ok

    def spawn(self, slot: Slot) -> None:
        slot.generation = secrets.token_hex(4)
        log = open(self.ws.locks_dir / f"{slot.id}.log", "ab")
        with log:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.pool.worker", "--root", str(self.ws.root),
                 "--id", slot.id, "--generation", slot.generation, *self.host_args()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                umask=user_umask())
        slot.started = self.clock()
        slot.identity = None
        self.event("worker-spawn", worker=slot.id, generation=slot.generation, pid=slot.proc.pid)

    def signal(self, slot: Slot, signum: int) -> None:
        pid = slot.proc.pid if slot.proc else slot.identity.pid if slot.identity else None
        if pid is None:
            return
        ident = slot.identity
        if ident is not None and ident.is_running() is False:
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    # -- failures and pause ---------------------------------------------------

    def stop_all(self) -> None:
        """Stop claiming, let running items finish up to the grace, then kill and revoke."""
        running = [s for s in self.slots.values() if s.running]
        self.event("shutdown", reason=self.stop_requested() or "batch finished",
                   workers=len(running), grace=self.cfg.run.shutdown_grace)
        for slot in running:
            self.signal(slot, signal.SIGTERM)
        deadline = self.clock() + (self.cfg.run.shutdown_grace if self.stop_requested() else 30.0)
        while self.clock() < deadline and any(self.alive(s) for s in running):
            time.sleep(0.05)
        hbs = heartbeat.read_all(self.ws.heartbeats_dir)
        for slot in running:
            hb = hbs.get(slot.id)
            if self.alive(slot):
                self.kill_now(slot, hb)
            if hb is not None:
                self.bury(slot.id, hb, "shutdown", count=False, planned=True)
            slot.generation = ""

    def kill_now(self, slot: Slot, hb: dict[str, Any] | None) -> None:
        """After the shutdown grace: KILL the worker, then TERM/KILL its agent's group.

        The worker goes first so it cannot record the killed agent as a failed
        attempt; its claim is then revoked without counting the attempt.
        """
        pid = slot.proc.pid if slot.proc else slot.identity.pid if slot.identity else None
        if pid is not None:
            runner.kill_group(pid, grace=0,
                              start_time=slot.identity.start_time if slot.identity else None)
        if slot.proc is not None:
            slot.proc.wait()
        if hb and hb.get("agent_pid"):
            runner.kill_group(int(hb["agent_pid"]), start_time=hb.get("agent_start"))

    def alive(self, slot: Slot) -> bool:
        if slot.proc is not None:
            return slot.proc.poll() is None
        return lock_is_held(self.ws.worker_lock(slot.id))
