"""The coordinator: supervises N workers and trusts only what it reads on disk.

Each tick (sub-second by default) it
1. advances this host's lease and buries hosts that stopped (pool.hostwatch,
   with several hosts);
2. checks every worker slot and restarts dead or stale workers (pool.slots);
3. kills agent processes no live attempt owns, revokes claims no live worker
   names after ``orphan_grace``, takes in hand-dropped files;
4. follows wall-clock steps, promotes due retries and items whose dependencies
   are done, applies ``state/desired-workers`` and the memory floor;
5. trips the circuit breaker or the budget (pool.guards), integrates done items
   (repo.integration), and writes run.json / metrics.prom.
Each step that hits a fault of the machine is retried next tick (pool.faults).

A restarted coordinator adopts workers that are still alive. SIGINT/SIGTERM
stop claiming, give running items ``shutdown_grace``, then kill what is left
and return its claims to pending/.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from filelock import FileLock, Timeout

from harness.agents import orphans
from harness.liveness import heartbeat, hosts
from harness.queue import fsops, names
from harness.config import Config, queue_options
from harness.repo.integration import IntegrationQueue, reconcile_branches
from harness.liveness.process import ProcessIdentity
from harness.queue.core import Queue
from harness.queue.names import ItemName
from harness.queue.recovery import adopt_dropped, recover
from harness.pool import delivery
from harness.pool.faults import FaultWatch
from harness.pool.guards import Guards
from harness.pool.hostwatch import DuplicateHost, HostFenced, HostWatch
from harness.pool.pacing import Paced
from harness.pool.slots import Slots
from harness.pool.runstats import RunStats
from harness.workspace import EventTail, Workspace

DROP_SCAN_INTERVAL = 2.0  # seconds between looks for hand-dropped files
EXIT_FENCED = 3  # another host declared this one dead (see pool.hostwatch)
CLOCK_STEP_TOLERANCE = 1.0  # seconds the wall clock may move against the monotonic one per tick


class CoordinatorError(Exception):
    """Cannot start (another coordinator, unusable filesystem, bad repo): exit code 2."""


@dataclass
class Coordinator:
    ws: Workspace
    cfg: Config
    forever: bool = False
    clock: Any = time.monotonic
    on_event: Callable[[dict[str, Any]], None] | None = None  # every event, as read back
    on_fault: Callable[[str], None] = lambda text: None  # a fault of the machine, as it happens
    wall: Callable[[], float] = time.time  # due times are wall-clock (see watch_clock)

    def __post_init__(self) -> None:
        if self.cfg.run.multi_host and self.ws.host is None:
            self.ws = self.ws.for_host(hosts.host_id())
        self.hostwatch = (HostWatch(self.ws, self.cfg.run.host_stale_after, self._host_event,
                                    self.clock) if self.ws.host else None)
        self.tail: EventTail | None = None
        self.fenced: HostFenced | None = None
        self.faults = FaultWatch(self.ws, self.event, self.on_fault,
                                 self.cfg.run.fault_pause_after, self.clock)
        self.queue = Queue(self.ws.queue_dir, **queue_options(self.cfg), clock=self.wall,
                           on_junk=lambda text: self.event("junk", action=text))
        self.clock_offset = self.wall() - self.clock()
        self.waiting_seen: list[ItemName] = []  # the waiting names of the last promote
        self.orphans: dict[str, float] = {}
        self.stop_requested: str | None = None
        self.pool = Slots(self.ws, self.cfg, self.queue, self.event, self.clock,
                          host_args=self._host_args, stop_requested=lambda: self.stop_requested)
        self.guards = Guards(self.ws, self.cfg.run, self.event)
        self.repo = (self.ws.root / self.cfg.git.repo).resolve()
        mode = delivery.build(self.ws, self.cfg, self.queue, self.repo, self.event)
        self.merges = (IntegrationQueue(mode, self.ws, self.queue, self.event, self.clock)
                       if mode is not None else None)
        self.undelivered = 0  # done items a batch run ended without delivering
        self.stats = RunStats()
        self.lock = FileLock(str(self.ws.coordinator_lock))
        # Whole-queue scans, paced by their cost (pool.pacing): O(backlog) each, so not
        # every tick once the backlog is large.
        self.drop_scan = Paced(DROP_SCAN_INTERVAL, clock=self.clock)
        self.count_scan = Paced(0.0, clock=self.clock)
        self.counts: dict[str, int] = {}
        self.terminal_scan = Paced(0.0, clock=self.clock)
        self.terminal: dict[str, str] = {}  # done/failed by id, for items waiting on others

    @property
    def budget_hit(self) -> str | None:
        return self.guards.budget_hit

    def desired_workers(self) -> int:
        return self.pool.desired_workers()

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        """Take the singleton lock, check the filesystem, recover, adopt live workers."""
        self.ws.make_dirs()
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            other = heartbeat.read(self.ws.coordinator_file) or {}
            raise CoordinatorError(
                f"another coordinator is running for {self.ws.root}: pid {other.get('pid', '?')}"
                f" on {other.get('host', '?')}, started {other.get('started_at', '?')}"
                f" (lock {self.ws.coordinator_lock})") from None
        self.queue.probe()
        self.tail = EventTail(self.ws.events_file)  # from here on: run prints what it reads
        if self.hostwatch is not None:
            try:
                self.hostwatch.start()
            except DuplicateHost as exc:
                self.lock.release()
                raise CoordinatorError(str(exc)) from None
        else:
            me = ProcessIdentity.of()
            heartbeat.HeartbeatWriter(self.ws.coordinator_file, self.ws.tmp_dir,
                                      **me.as_record(),
                                      started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")).beat()
        # A pool size set by `scale` belongs to the run that was scaled, not to this one.
        self.ws.desired_workers_file.unlink(missing_ok=True)
        for action in recover(self.queue):
            self.event("recovered", action=action)
        # Names, not ids: an item retried and failed again has a new name.
        self.failed_at_start = set(names.entries(self.queue.dir("failed")))
        self.done_at_start = set(names.entries(self.queue.dir("done")))
        self.stats.baseline(len(self.done_at_start), len(self.failed_at_start))
        self.pool.adopt()
        orphans.become_subreaper()  # a dead worker's agent comes back to us, not to init
        self.hbs = heartbeat.read_all(self.ws.heartbeats_dir)
        self.kill_orphans(orphans.marked(self.ws.root), "left by an earlier run")
        reconcile_branches(self.repo, self.queue, self.event)
        if self.merges is not None:
            self.merges.load_pending()
        self.event("coordinator-start", agents=self.pool.desired_workers(), forever=self.forever)

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        """Supervise until the batch is finished (or a signal); return the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.stop_requested:
                try:
                    self.tick()
                    if self.hostwatch is not None:
                        # A host paused within the tick (after its first step) may have been
                        # buried meanwhile: it stops now, not "batch finished" (exit 0).
                        self.hostwatch.check()
                except HostFenced as exc:
                    self._stop_fenced(exc)
                    break
                if not self.forever and self.finished():
                    break
                time.sleep(self.cfg.run.tick)
            if not self.fenced:
                self.pool.stop_all()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._finish()
        failed = set(names.entries(self.queue.dir("failed"))) - self.failed_at_start
        self.event("coordinator-exit", reason=self.stop_requested or "batch finished",
                   failed=len(failed), undelivered=self.undelivered)
        if self.fenced:
            return EXIT_FENCED
        if self.stop_requested:
            return 128 + signal.Signals[self.stop_requested].value
        if self.budget_hit:
            self.guards.lift_budget_pause()
            return 1
        return 1 if failed or self.undelivered else 0

    def _finish(self) -> None:
        """Show the last tick's events, write the final run.json, give up the singleton.

        The final merges, merge failures and shutdown revokes are logged after the
        last ``watch_events``; they are read here so ``run`` prints them. A pool
        size set by ``scale`` belongs to this run: removed, so it drives no ``gc``.
        """
        self.read_events()
        self.publish_stats(running=False)
        self.ws.desired_workers_file.unlink(missing_ok=True)
        self.ws.coordinator_file.unlink(missing_ok=True)
        self.lock.release()

    def run_report(self) -> dict[str, Any]:
        """What this run finished (not the whole workspace): for ``run``'s summary."""
        done = set(names.entries(self.queue.dir("done"))) - self.done_at_start
        failed = set(names.entries(self.queue.dir("failed"))) - self.failed_at_start
        reasons = {}
        for entry in sorted(failed):
            parsed = names.try_parse(entry)
            path = self.queue.dir("failed") / (entry + names.REASON_SUFFIX)
            try:
                reasons[parsed.id if parsed else entry] = path.read_text().strip()
            except OSError:
                reasons[parsed.id if parsed else entry] = "(no reason recorded)"
        return self.stats.report(done=len(done), failed=reasons)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = signal.Signals(signum).name

    def tick(self) -> None:
        """One pass of supervision. Each step that hits a fault of the machine (OSError) is
        reported and retried next tick; the others still run (pool.faults)."""
        step = self.faults.step
        if self.hostwatch is not None:
            step("hosts", self.watch_hosts)  # HostFenced passes through: it is no fault
        self.hbs = heartbeat.read_all(self.ws.heartbeats_dir)
        for slot in list(self.pool.slots.values()):
            step(f"check {slot.id}", lambda: self.pool.check_slot(slot, self.hbs.get(slot.id)))
        step("reap", self.pool.reap_doomed)
        step("orphans", self._kill_foster_orphans)
        step("revoke", lambda: self.revoke_orphans(self.hbs))
        step("take in dropped files", self.take_in_dropped_files)
        step("clock", self.watch_clock)
        step("promote", self.promote)
        step("scale", self.pool.scale)
        step("read events", self.watch_events)
        step("budget", lambda: self.guards.check_budget(self.stats))
        if self.merges is not None and not (self.hostwatch and self.hostwatch.fenced()):
            step("integrate", self.merges.step)
        step("resume", self.auto_resume)
        step("write run.json", self.publish_stats)
        self.faults.tick_done()

    def _kill_foster_orphans(self) -> None:
        foster = self._foster_children()
        self.kill_orphans(orphans.marked(self.ws.root, foster), "its worker is gone")
        orphans.reap(foster)  # killed now or earlier, or ended by themselves

    def finished(self) -> bool:
        """The batch is over: nothing live, no worker still recording, nothing left to deliver.

        The tick's paced count screens first (cheap). Then, read afresh in this
        order: heartbeats, events, the queue. A worker logs an attempt's end before its
        heartbeat goes idle, so an idle heartbeat read first means that attempt-end is
        in the events read next, and its item reaches the integration queue. (The
        tick's own readings are too old: a whole attempt can start and end while the
        tick's integration step pushes.) A run ends only on a count taken now.
        """
        if not self.counts or self._live(self.counts):
            return False
        hbs = heartbeat.read_all(self.ws.heartbeats_dir)
        if any(hb.get("state") == "working" for hb in hbs.values()):
            return False
        self.watch_events()
        if self._live(self.queue.counts()):
            return False
        return not self._integration_pending()

    def _integration_pending(self) -> bool:
        """Done items still to deliver; a remote unreachable for ``[git] remote_wait`` ends
        a batch run anyway (exit 1): they stay in done/ for the next run to deliver."""
        merges = self.merges
        if not merges:
            return False
        since = merges.unreachable_since
        if since is not None and self.clock() - since > self.cfg.git.remote_wait:
            self.undelivered = len(merges.pending)
            return False
        return True

    def _live(self, counts: dict[str, int]) -> bool:
        """Whether ``counts`` show an item still to run (junk left in place not counted)."""
        live = {state: n - self.queue.stuck_in(state) for state, n in counts.items()}
        return bool(live["claimed"] or (not self.budget_hit and live["pending"] + live["waiting"]))

    def _foster_children(self) -> list[int]:
        """Children of this process that are not its workers: re-parented orphans."""
        workers = self.pool.worker_pids()
        return [pid for pid in orphans.children() if pid not in workers]

    def kill_orphans(self, found: list[orphans.Marked], why: str) -> None:
        """Kill marked processes that no live attempt owns (agents of dead workers, their
        escaped children). Those re-parented to this process are reaped next tick."""
        killed = orphans.kill(p for p in found if self._ours(p) and not self._owns(p))
        if killed:
            self.event("orphans-killed", why=why, pids=[p.pid for p in killed],
                       owners=sorted({f"{p.worker}:{p.item}~{p.attempt}" for p in killed}))

    def _ours(self, p: orphans.Marked) -> bool:
        """Marked by one of this host's workers: other hosts on this machine (host ids
        sharing one kernel: containers, the tests) supervise their own agents."""
        return self.ws.host is None or bool(hosts.workers_of(self.ws.host, [p.worker]))

    def _owns(self, p: orphans.Marked) -> bool:
        """A live slot with that generation whose heartbeat names that attempt."""
        slot = self.pool.slots.get(p.worker)
        hb = self.hbs.get(p.worker) or {}
        return (slot is not None and slot.running and slot.generation == p.generation
                and hb.get("item_id") == p.item and hb.get("attempt") == p.attempt)

    def revoke_orphans(self, hbs: dict[str, dict[str, Any]]) -> None:
        """Revoke claims that no live worker's heartbeat names, once they stay unnamed for
        the grace."""
        named = {hb.get("item") for hb in self._living(hbs).values()}
        now = self.clock()
        claimed = set(names.entries(self.queue.dir("claimed")))
        self.orphans = {c: t for c, t in self.orphans.items() if c in claimed and c not in named}
        for entry in claimed - named:
            first = self.orphans.setdefault(entry, now)
            if now - first > self.cfg.run.orphan_grace:
                outcome = self.queue.revoke(entry, "orphaned claim: no live worker names it")
                self.event("revoke", item=entry, outcome=outcome, why="orphaned")
                self.orphans.pop(entry)

    def _living(self, hbs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The heartbeats that may be a live worker's: this host's (its slots judge them),
        and another host's while that host holds a lease and no tombstone buries the
        generation the worker was started by. A buried host's worker can still claim in
        the moment before it reads its tombstone, and its heartbeat outlives it: were it
        trusted, that claim would never be revoked. Such a heartbeat is removed."""
        if self.ws.host is None:
            return hbs
        alive = hosts.living(self.ws, self.hostwatch.leases if self.hostwatch else None)
        out = {}
        for worker, hb in hbs.items():
            host = hosts.host_of(worker)
            generation = hb.get("host_generation")
            if host == self.ws.host or (host in alive and generation in (None, alive[host])):
                out[worker] = hb
            elif host and hosts.buried(self.ws, host, str(generation)):
                self.ws.heartbeat_file(worker).unlink(missing_ok=True)
            elif host in alive:  # started by an earlier generation of a live host (adopted)
                out[worker] = hb
        return out

    # -- pool size -------------------------------------------------------------

    def take_in_dropped_files(self) -> None:
        """Enqueue or dead-letter files an operator dropped into the queue by hand."""
        if not self.drop_scan.due():
            return
        for action in self.drop_scan.run(lambda: adopt_dropped(self.queue)):
            self.event("dropped-file", action=action)

    def _host_args(self) -> list[str]:
        if self.hostwatch is None:
            return []
        return ["--host", self.hostwatch.host, "--host-generation", self.hostwatch.generation]

    # -- other hosts -------------------------------------------------------------

    def watch_hosts(self) -> None:
        """Advance this host's lease; take back the claims of hosts that stopped ticking."""
        assert self.hostwatch is not None
        for lease in self.hostwatch.tick():
            self._take_over(lease.host)

    def _take_over(self, host: str) -> None:
        """A buried host's claims go back to the queue (its workers, if they wake, are
        fenced by the rename); its undelivered done items join this host's integration."""
        hbs = heartbeat.read_all(self.ws.heartbeats_dir)
        for worker in hosts.workers_of(host, hbs):
            hb = hbs[worker]
            if hb.get("item"):
                outcome = self.queue.revoke(hb["item"], f"host {host} stopped ticking")
                self.event("revoke", worker=worker, item=hb["item"], outcome=outcome,
                           why=f"host {host} dead")
            self.ws.heartbeat_file(worker).unlink(missing_ok=True)
        if self.merges is not None:
            pending = list(self.merges.pending)
            self.merges.load_pending()
            self.merges.pending = pending + [i for i in self.merges.pending if i not in pending]

    def _stop_fenced(self, exc: HostFenced) -> None:
        """Buried by another host: kill this host's workers now, revoke nothing (the other
        host did), record nothing."""
        self.fenced = exc
        self.event("host-fenced", host=exc.host, by=exc.by)
        hbs = heartbeat.read_all(self.ws.heartbeats_dir)
        for slot in list(self.pool.slots.values()):
            if slot.running:
                self.pool.kill_now(slot, hbs.get(slot.id))
                slot.generation = ""

    def _host_event(self, kind: str, /, **fields: Any) -> None:
        """A host event is shown at once: the start may wait on another lease for
        host_stale_after before the first tick reads the events."""
        self.event(kind, **fields)
        self.read_events()

    def read_events(self) -> list[dict[str, Any]]:
        """The events logged since the last read: counted in the stats, handed to on_event."""
        evs = self.tail.read() if self.tail is not None else []
        for ev in evs:
            self.stats.observe(ev)
            if self.on_event is not None:
                self.on_event(ev)
        return evs

    def watch_events(self) -> None:
        for ev in self.read_events():
            if ev.get("event") != "attempt-end":
                continue
            if ev.get("queue") == "done" and self.merges is not None:
                self.merges.add(ev["item"])
            self.guards.attempt_ended(ev)

    def publish_stats(self, running: bool = True) -> None:
        """Write state/run.json (for status) and state/metrics.prom (for Prometheus).

        ``running=False``: the final state once the run has ended (no worker alive).
        """
        from harness.pool.metrics import write_prometheus

        alive = self.pool.running() if running else 0
        if self.count_scan.due() or not running:
            self.counts = self.count_scan.run(self.queue.counts)
        snap = self.stats.snapshot(self.counts, alive, self.pool.desired_workers() if running else 0,
                                   self.ws.interrupt_file.exists(), running=running)
        snap["integration_lag"] = len(self.merges.pending) if self.merges else 0
        snap["push_retries_total"] = self.merges.retries if self.merges else 0
        fsops.write_atomic(self.ws.run_file, orjson.dumps(snap), tmp_dir=self.ws.tmp_dir,
                           durable=False)
        write_prometheus(self.ws.metrics_file, snap)

    def promote(self) -> None:
        self.queue.promote(states=self._terminal_states)
        self.waiting_seen = self.queue.waiting_seen

    def _terminal_states(self, fresh: bool) -> dict[str, str]:
        """done/ and failed/ by id, listed afresh when asked or when the paced scan is due
        (a million done items take a third of a second to list: not every tick)."""
        if fresh or self.terminal_scan.due():
            self.terminal = self.terminal_scan.run(self.queue.terminal_states)
        return self.terminal

    def watch_clock(self) -> None:
        """Follow a step of the wall clock (settimeofday, a VM resumed from a snapshot).

        Due times in waiting/ and a quota pause's resume time are wall-clock; a step
        of the clock would stall them (back) or skip them (forward). The offset
        between the wall clock and this process's monotonic clock is watched; when
        it jumps by more than CLOCK_STEP_TOLERANCE, the due times the last promote
        saw and the resume time move by the same amount. Slow drift (NTP slewing)
        is followed, never treated as a step.
        """
        offset = self.wall() - self.clock()
        step, self.clock_offset = offset - self.clock_offset, offset
        if abs(step) <= CLOCK_STEP_TOLERANCE:
            return
        shifted = self.queue.shift_due(self.waiting_seen, step)
        resume_at = self.ws.resume_at()
        if resume_at is not None:
            self.ws.shift_resume_at(step)
        self.event("clock-step", seconds=round(step, 3), shifted=shifted,
                   resume_at_moved=resume_at is not None)

    def auto_resume(self) -> None:
        """Lift a quota pause at the reset time the agent reported."""
        resume_at = self.ws.resume_at()
        if resume_at is not None and self.wall() >= resume_at and self.ws.resume():
            self.event("resumed", why="rate-limit reset time reached")

    # -- shutdown --------------------------------------------------------------

    # -- helpers ---------------------------------------------------------------

    def event(self, kind: str, /, **fields: Any) -> None:
        try:
            self.ws.log_event(kind, source="coordinator", **fields)
        except OSError:
            self.faults.lost_event()  # counted in the write-fault event once writes work
