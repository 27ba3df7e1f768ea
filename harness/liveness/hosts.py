"""Several hosts on one workspace: who a host is, whether it still ticks, declaring it dead.

A host is its coordinator. Its identity is ``HARNESS_HOST_ID`` or, by default,
the host name plus the first 8 characters of the boot id (a rebooted machine
is a new host; two VMs cloned with one hostname are not one host). Its lease
is ``state/hosts/<host>.json``, rewritten every tick with a rising counter and
the generation of this coordinator's start. Other hosts judge it only by that
counter, on their own monotonic clock (liveness.heartbeat.Staleness): clocks
and NFS attribute caches never decide.

A host whose counter stops for ``host_stale_after`` is declared dead by the
first live host to notice: an exclusive create of ``state/hosts/<host>.dead``
naming the generation it buries. Only that host takes its claims back. The
buried host, if it was merely frozen, finds the tombstone for its generation
at its next tick (and its workers before their next claim) and stops; its
workers' late results are fenced by the queue, since their claims were renamed.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from harness.liveness.process import boot_id
from harness.queue import fsops
from harness.workspace import Workspace

HOST_ID_ENV: Final = "HARNESS_HOST_ID"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # no dots: worker names are <host>.w<N>


class HostIdError(ValueError):
    """HARNESS_HOST_ID is not usable as a host id."""


def host_id(environ: dict[str, str] | None = None) -> str:
    """This host's id: HARNESS_HOST_ID if set (letters, digits, '_' and '-'), else the
    host name and boot id, made safe for file names."""
    env = os.environ if environ is None else environ
    given = env.get(HOST_ID_ENV, "").strip()
    if given:
        if _UNSAFE.search(given) or len(given) > 64:
            raise HostIdError(f"{HOST_ID_ENV}={given!r}: use 1-64 letters, digits, '_' or '-'")
        return given
    name = _UNSAFE.sub("-", socket.gethostname()).strip("-") or "host"
    return f"{name[:40]}-{boot_id().replace('-', '')[:8]}"


@dataclass(frozen=True)
class Lease:
    """Another host's lease as read from its file."""

    host: str
    counter: Any
    generation: str
    record: dict[str, Any]


def leases(ws: Workspace) -> dict[str, Lease]:
    """Every host's lease in the workspace, keyed by host id."""
    try:
        entries = os.listdir(ws.hosts_dir)
    except FileNotFoundError:
        return {}
    found = (lease_of(ws, e.removesuffix(".json")) for e in entries
             if e.endswith(".json") and not e.startswith(".") and not e.endswith(".run.json"))
    return {lease.host: lease for lease in found if lease is not None}


def lease_of(ws: Workspace, host: str) -> Lease | None:
    """``host``'s lease, or None if it has none (or it is unreadable)."""
    try:
        record = orjson.loads(fsops.read_regular(path_of(ws, host)))
    except (OSError, ValueError, fsops.NotAFile):
        return None
    if not isinstance(record, dict):
        return None
    return Lease(host, record.get("counter"), str(record.get("generation")), record)


def bury(ws: Workspace, host: str, generation: str, by: str) -> bool:
    """Declare ``host`` (its ``generation``) dead; True if this call did (exclusive create:
    of several live hosts noticing at once, exactly one takes the claims back)."""
    body = orjson.dumps({"host": host, "generation": generation, "by": by,
                         "at": time.time()})
    try:
        os.close(fsops.write_new(ws.tombstone(host), body, durable=True))
    except FileExistsError:
        return False
    return True


def buried(ws: Workspace, host: str, generation: str) -> dict[str, Any] | None:
    """The tombstone that buries ``host``'s ``generation``, if there is one."""
    try:
        record = orjson.loads(fsops.read_regular(ws.tombstone(host)))
    except (OSError, ValueError, fsops.NotAFile):
        return None
    if isinstance(record, dict) and str(record.get("generation")) == generation:
        return record
    return None


def rise(ws: Workspace, host: str) -> None:
    """A new coordinator of ``host``: an older generation's tombstone no longer applies."""
    fsops.unlink_quiet(ws.tombstone(host))


def living(ws: Workspace, found: dict[str, Lease] | None = None) -> dict[str, str]:
    """Host id -> generation, for every lease (``found``, or read now) that no tombstone
    buries."""
    return {h: lease.generation for h, lease in (found or leases(ws)).items()
            if buried(ws, h, lease.generation) is None}


def host_of(worker: str) -> str | None:
    """The host id in a worker name ``<host>.w<N>`` (host ids have no dots), or None."""
    host, dot, _ = worker.partition(".")
    return host if dot else None


def workers_of(host: str, names: Any) -> list[str]:
    """The worker names (``<host>.w<N>``) among ``names`` that belong to ``host``."""
    return [n for n in names if n.startswith(host + ".w") and n[len(host) + 2:].isdigit()]


def path_of(ws: Workspace, host: str) -> Path:
    return ws.hosts_dir / f"{host}.json"
