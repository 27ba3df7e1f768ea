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
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_all(directory: Path) -> dict[str, dict[str, Any]]:
    """Every readable heartbeat in ``directory``, keyed by worker id (the file stem)."""
    out = {}
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return {}
    for entry in entries:
        if entry.endswith(".json") and not entry.startswith("."):
            record = read(directory / entry)
            if record is not None:
                out[entry.removesuffix(".json")] = record
    return out


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
