"""Heartbeat files: the one place that writes and reads ``state/heartbeats/<worker>.json``.

A worker rewrites its heartbeat atomically (write in tmp, rename) with a
counter that increases on every write. The coordinator never compares
timestamps from the file: it notes, on its own monotonic clock, when it
last saw the counter change (``Staleness``), so clock skew, mtime
granularity and NFS attribute caches never decide liveness.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from harness.queue import fsops


class HeartbeatWriter:
    """Owns one worker's heartbeat file; ``beat(**fields)`` updates and rewrites it."""

    def __init__(self, path: Path, tmp_dir: Path, **fields: Any) -> None:
        self.path, self.tmp_dir = path, tmp_dir
        self.record: dict[str, Any] = {"counter": 0, **fields}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def beat(self, **fields: Any) -> None:
        self.record.update(fields)
        self.record["counter"] += 1
        self.record["written_at"] = time.time()
        fsops.write_atomic(self.path, orjson.dumps(self.record), tmp_dir=self.tmp_dir,
                           durable=False)

    def remove(self) -> None:
        fsops.unlink_quiet(self.path)


def read(path: Path) -> dict[str, Any] | None:
    """The heartbeat at ``path``, or None if missing or unreadable (a torn file cannot occur)."""
    try:
        return _parse(path)
    except (OSError, ValueError):
        return None


def _parse(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; OSError if unreadable, ValueError if not an object."""
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object (a {type(data).__name__})")
    return data


def read_all(directory: Path) -> dict[str, dict[str, Any]]:
    """Every readable heartbeat in ``directory``, keyed by worker id (the file stem)."""
    return scan(directory)[0]


def scan(directory: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(readable heartbeats, {worker: what is wrong} for the files that cannot be read).

    Heartbeats are written by rename, so an unreadable one was damaged from
    outside (a full disk, an editor, a bad copy): ``status`` reports it rather
    than let its worker vanish from view.
    """
    out: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return {}, {}
    for entry in entries:
        if entry.endswith(".json") and not entry.startswith("."):
            worker = entry.removesuffix(".json")
            try:
                out[worker] = _parse(directory / entry)
            except FileNotFoundError:
                continue  # removed meanwhile: its worker exited
            except (OSError, ValueError) as exc:
                bad[worker] = str(exc)
    return out, bad


@dataclass
class Staleness:
    """Tracks when each worker's counter last changed, on the observer's monotonic clock."""

    clock: Any = time.monotonic
    _seen: dict[str, tuple[Any, float]] = field(default_factory=dict)

    def observe(self, worker: str, generation: Any, counter: Any) -> float:
        """Record a reading; return seconds since the (generation, counter) pair last changed."""
        now = self.clock()
        key = (generation, counter)
        last = self._seen.get(worker)
        if last is None or last[0] != key:
            self._seen[worker] = (key, now)
            return 0.0
        return now - last[1]

    def forget(self, worker: str) -> None:
        self._seen.pop(worker, None)
