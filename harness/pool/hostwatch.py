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

DUPLICATE_PROBE = 1.5  # seconds to watch our own lease for another writer at start


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
        machine with this machine's hostname.

        The host lock alone cannot tell: two NFS clients with one hostname share one NFSv4
        client identity, so the server takes the second for a reboot of the first and drops
        the first one's locks and opens. A lease whose counter moves while we watch is the
        proof of life. Same hostname and same boot id is this machine (several host ids on
        one machine, containers): allowed.
        """
        me = ProcessIdentity.of()
        suspects = {h: lease for h, lease in hosts.leases(self.ws).items()
                    if h == self.host or (lease.record.get("host") == me.host
                                          and lease.record.get("boot_id") != me.boot_id)}
        if not suspects:
            return
        deadline = self.clock() + DUPLICATE_PROBE
        while self.clock() < deadline:
            time.sleep(0.1)
            now = hosts.leases(self.ws)
            for h, first in suspects.items():
                lease = now.get(h)
                if lease is not None and lease.counter != first.counter:
                    raise DuplicateHost(self._duplicate_reason(lease))

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
        if gap > self.stale_after / 2:
            # This host itself stood still (frozen, or the NFS server was away and every
            # host blocked alike): what it saw of the others before means nothing now.
            self.staleness = heartbeat.Staleness(self.clock)
            return []
        dead = []
        for lease in hosts.leases(self.ws).values():
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
        """HostFenced if another host has buried this host's generation."""
        tomb = hosts.buried(self.ws, self.host, self.generation)
        if tomb is not None:
            raise HostFenced(self.host, str(tomb.get("by")))

    def fenced(self) -> bool:
        """Checked before a transition outside the tick (a late merge): buried meanwhile?"""
        return hosts.buried(self.ws, self.host, self.generation) is not None

    def record(self) -> dict[str, Any]:
        return dict(self.writer.record) if self.writer else {}
