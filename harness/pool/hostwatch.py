"""A coordinator among several hosts: its lease, its fence, and the burial of dead hosts.

Used only with ``[run] multi_host`` (see liveness.hosts for the rules). Each
tick the coordinator calls :meth:`HostWatch.tick`, which

1. advances this host's lease counter;
2. raises :class:`HostFenced` if another host has buried this host's generation
   (the coordinator then stops at once and records nothing);
3. observes every other host's counter on this process's monotonic clock and
   buries the ones silent for ``host_stale_after``, returning them so that the
   coordinator takes their claims back. A tick that comes more than half of
   ``host_stale_after`` after the previous one (this host was itself frozen, or
   the NFS server was away and every host blocked alike) forgets what it saw and
   buries no one: otherwise hosts that stood still together would bury each other.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from harness.liveness import heartbeat, hosts
from harness.liveness.process import ProcessIdentity
from harness.workspace import Workspace



class HostFenced(Exception):
    """Another host declared this one dead: its claims were taken back."""

    def __init__(self, host: str, by: str) -> None:
        self.host, self.by = host, by
        super().__init__(f"host {host} was declared dead by host {by} (its lease stopped"
                         " advancing): its claims were taken back; it stops without recording"
                         " anything")


class DuplicateHost(Exception):
    """A live coordinator elsewhere writes this host id's lease."""


class HostWatch:
    def __init__(self, ws: Workspace, stale_after: float, event: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert ws.host is not None
        self.ws, self.host, self.stale_after = ws, ws.host, stale_after
        self.event, self.clock = event, clock
        self.generation = secrets.token_hex(6)
        self.staleness = heartbeat.Staleness(clock)
        self.writer: heartbeat.HeartbeatWriter | None = None
        self.last_tick: float | None = None
        self.leases: dict[str, hosts.Lease] | None = None  # every host's, as the last tick read

    def start(self) -> None:
        """Refuse a host id another live coordinator uses; then take the lease."""
        self._refuse_duplicate()
        hosts.rise(self.ws, self.host)
        me = ProcessIdentity.of()
        self.writer = heartbeat.HeartbeatWriter(
            self.ws.coordinator_file, self.ws.tmp_dir, **me.as_record(), host_id=self.host,
            generation=self.generation, started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.writer.beat()

    def _refuse_duplicate(self) -> None:
        """DuplicateHost if a live coordinator holds this host id, or runs on another
        machine with this machine's hostname; else return once no such lease can be live.

        The host lock alone cannot tell: two NFS clients with one hostname share one NFSv4
        client identity, so the server takes the second for a reboot of the first and drops
        the first one's locks and opens. Same hostname and same boot id is this machine
        (several host ids on one machine, containers): allowed. Of the leases that match,
        one written by a process of this machine is judged at once by that process; any
        other must stand still for ``host_stale_after`` (the rule hosts bury each other
        by), or have been last written that long ago by its writer's clock, and is then
        buried. A shorter watch (1.5 s) let a second coordinator with one host id run
        beside the first in the NFS lab: the first, its NFS state just dropped by the
        server, did not write its lease for longer than that.
        """
        me = ProcessIdentity.of()
        watching = {}
        for h, lease in hosts.leases(self.ws).items():
            if not self._may_be_me(h, lease, me):
                continue
            if self._dead_now(lease):
                self._bury_stale(lease)
            elif hosts.buried(self.ws, h, lease.generation) is None:
                watching[h] = lease
        if watching:
            self.event("host-lease-wait", hosts=sorted(watching), up_to_s=self.stale_after)
        staleness = heartbeat.Staleness(self.clock)
        for h, lease in watching.items():
            staleness.observe(h, lease.generation, lease.counter)
        while watching:
            time.sleep(0.2)
            now = hosts.leases(self.ws)
            for h, first in list(watching.items()):
                lease = now.get(h)
                if lease is None or hosts.buried(self.ws, h, first.generation):
                    del watching[h]
                elif (lease.generation, lease.counter) != (first.generation, first.counter):
                    raise DuplicateHost(self._duplicate_reason(lease))
                elif staleness.observe(h, first.generation, first.counter) > self.stale_after:
                    self._bury_stale(first)
                    del watching[h]

    def _may_be_me(self, host: str, lease: hosts.Lease, me: ProcessIdentity) -> bool:
        """Could this lease's coordinator collide with us: our id, or our hostname from
        another machine?"""
        return host == self.host or (lease.record.get("host") == me.host
                                     and lease.record.get("boot_id") != me.boot_id)

    def _dead_now(self, lease: hosts.Lease) -> bool:
        """Judged without watching: its writer is a process of this machine (alive:
        DuplicateHost; gone: dead), or it was last written ``host_stale_after`` ago."""
        writer = ProcessIdentity.from_record(lease.record)
        running = writer.is_running() if writer else None
        if running:
            raise DuplicateHost(self._duplicate_reason(lease))
        written = lease.record.get("written_at")
        old = isinstance(written, (int, float)) and time.time() - written > self.stale_after
        return running is False or old

    def _bury_stale(self, lease: hosts.Lease) -> None:
        """Bury another host id's dead lease, so that its coordinator, should it wake, stops.
        (A lease of our own id needs no tombstone: our lease replaces its generation, which
        :meth:`check` reads.)"""
        if lease.host != self.host and hosts.bury(self.ws, lease.host, lease.generation,
                                                  by=self.host):
            self.event("host-dead", host=lease.host, generation=lease.generation,
                       silent_s=None, stale_after=self.stale_after)

    def _duplicate_reason(self, lease: hosts.Lease) -> str:
        r = lease.record
        where = (f"its lease {hosts.path_of(self.ws, lease.host)} is being written by pid"
                 f" {r.get('pid')} on {r.get('host')} (boot {str(r.get('boot_id'))[:8]})")
        if lease.host == self.host:
            return (f"host id {self.host!r} is in use: {where}; give each host its own id"
                    f" ({hosts.HOST_ID_ENV}), and each cloned VM its own hostname and"
                    " nfs4_unique_id")
        return (f"host name {r.get('host')!r} is in use by live host {lease.host!r}: {where};"
                " two NFS clients with one hostname look like one client to the server, which"
                " then drops the first one's locks: give each machine its own hostname (and"
                " each cloned VM its own nfs4_unique_id)")

    def tick(self) -> list[hosts.Lease]:
        """Advance the lease; HostFenced if buried; the hosts this call buried."""
        assert self.writer is not None
        self.check()
        self.writer.beat()
        now = self.clock()
        gap, self.last_tick = now - (self.last_tick or now), now
        self.leases = seen = hosts.leases(self.ws)
        if gap > self.stale_after / 2:
            # This host itself stood still (frozen, or the NFS server was away and every
            # host blocked alike): what it saw of the others before means nothing now.
            self.staleness = heartbeat.Staleness(self.clock)
            self.event("host-stalled", host=self.host, seconds=round(gap, 1))
            return []
        dead = []
        for lease in seen.values():
            if lease.host == self.host:
                continue
            silent = self.staleness.observe(lease.host, lease.generation, lease.counter)
            if silent <= self.stale_after or hosts.buried(self.ws, lease.host, lease.generation):
                continue
            if hosts.bury(self.ws, lease.host, lease.generation, by=self.host):
                self.event("host-dead", host=lease.host, generation=lease.generation,
                           silent_s=round(silent, 1), stale_after=self.stale_after)
                dead.append(lease)
        return dead

    def check(self) -> None:
        """HostFenced if another host has buried this host's generation, or a newer
        coordinator of this host id has taken the lease (this one was frozen past
        host_stale_after and was waited out)."""
        tomb = hosts.buried(self.ws, self.host, self.generation)
        if tomb is not None:
            raise HostFenced(self.host, str(tomb.get("by")))
        lease = hosts.lease_of(self.ws, self.host)
        if lease is not None and lease.generation != self.generation:
            raise HostFenced(self.host, f"a newer coordinator of host id {self.host}"
                                        f" (pid {lease.record.get('pid')} on"
                                        f" {lease.record.get('host')})")

    def fenced(self) -> bool:
        """Checked before a transition outside the tick (a late merge): :meth:`check`'s
        verdict, as a bool."""
        try:
            self.check()
        except HostFenced:
            return True
        return False

    def record(self) -> dict[str, Any]:
        return dict(self.writer.record) if self.writer else {}
