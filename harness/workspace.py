"""Paths of a workspace (the operator's API on disk) and its event log.

Every other module gets its paths from here, so the layout in DESIGN.md is
written down once::

    harness.toml  prompts/  queue/  state/  worktrees/  logs/

With several hosts on one workspace (``[run] multi_host``) a Workspace has a
``host``: what one host's coordinator owns is per host, one writer per file
(``state/hosts/<host>.json`` its lease, ``.lock``, ``.run.json``, ``.prom``,
``.desired``; ``state/events/<host>.jsonl``; workers ``<host>.w1``); the queue,
heartbeats, logs and the interrupt file are shared.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True)
class Workspace:
    root: Path
    host: str | None = None  # this host's id in a multi-host workspace, else None

    @classmethod
    def at(cls, root: str | os.PathLike[str], host: str | None = None) -> Workspace:
        return cls(Path(root).resolve(), host)

    def for_host(self, host: str | None) -> Workspace:
        return Workspace(self.root, host)

    def _per_host(self, single: str, suffix: str) -> Path:
        return self.hosts_dir / f"{self.host}{suffix}" if self.host else self.state_dir / single

    @cached_property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    def tombstone(self, host: str) -> Path:
        """Present = ``host`` was declared dead by another (its claims were taken back)."""
        return self.hosts_dir / f"{host}.dead"

    def worker_name(self, n: int) -> str:
        return f"{self.host}.w{n}" if self.host else f"w{n}"

    def event_files(self) -> list[Path]:
        """Every event log: the single-host one and one per host (readers merge them)."""
        found = [self.state_dir / "events.jsonl"]
        try:
            found += sorted(p for p in (self.state_dir / "events").iterdir()
                            if p.suffix == ".jsonl")
        except FileNotFoundError:
            pass
        return [p for p in found if p.exists()]

    def exists(self) -> bool:
        """A workspace has a harness.toml or a queue/ (a fresh clone of a project that
        commits harness.toml has no queue/ yet; ``run`` and ``enqueue`` make it)."""
        return self.config_file.is_file() or self.queue_dir.is_dir()

    @cached_property
    def config_file(self) -> Path:
        return self.root / "harness.toml"

    @cached_property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @cached_property
    def state_dir(self) -> Path:
        return self.root / "state"

    @cached_property
    def heartbeats_dir(self) -> Path:
        return self.state_dir / "heartbeats"

    @cached_property
    def locks_dir(self) -> Path:
        return self.state_dir / "workers"

    @cached_property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @cached_property
    def events_file(self) -> Path:
        """This process's event log (one writer per file across hosts: O_APPEND is not
        atomic between NFS clients)."""
        if self.host:
            return self.state_dir / "events" / f"{self.host}.jsonl"
        return self.state_dir / "events.jsonl"

    @cached_property
    def interrupt_file(self) -> Path:
        return self.state_dir / "interrupt-request.txt"

    @cached_property
    def desired_workers_file(self) -> Path:
        return self._per_host("desired-workers", ".desired")

    @cached_property
    def coordinator_file(self) -> Path:
        """The coordinator's record; with a host, its lease (the counter advances every tick)."""
        return self._per_host("coordinator.json", ".json")

    @cached_property
    def coordinator_lock(self) -> Path:
        return self._per_host("coordinator.lock", ".lock")

    @cached_property
    def worktrees_dir(self) -> Path:
        return self.root / "worktrees"

    @cached_property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @cached_property
    def cancel_dir(self) -> Path:
        return self.state_dir / "cancel"

    @cached_property
    def run_file(self) -> Path:
        return self._per_host("run.json", ".run.json")

    @cached_property
    def metrics_file(self) -> Path:
        return self._per_host("metrics.prom", ".prom")

    def cancel_requested(self, item_id: str) -> bool:
        return (self.cancel_dir / item_id).exists()

    def heartbeat_file(self, worker: str) -> Path:
        return self.heartbeats_dir / f"{worker}.json"

    def worker_lock(self, worker: str) -> Path:
        return self.locks_dir / f"{worker}.lock"

    def worktree(self, worker: str) -> Path:
        return self.worktrees_dir / worker

    def attempt_dir(self, item_id: str, attempt: int) -> Path:
        return self.logs_dir / item_id / str(attempt)

    def make_dirs(self) -> None:
        """Create the runtime directories; new ones are 0700 (prompts, transcripts and agent
        output are private; a shared queue sets its own mode, see Queue)."""
        extra = (self.hosts_dir, self.events_file.parent) if self.host else ()
        for d in (self.queue_dir, self.heartbeats_dir, self.locks_dir, self.tmp_dir,
                  self.cancel_dir, self.worktrees_dir, self.logs_dir, *extra):
            for parent in reversed([d, *d.parents]):
                if parent == self.root or not parent.is_relative_to(self.root):
                    continue
                try:
                    parent.mkdir(mode=0o700)
                except FileExistsError:
                    pass

    def interrupt_reason(self) -> str | None:
        """The pause reason if the interrupt file is present, else None."""
        try:
            return self.interrupt_file.read_text().strip() or "paused"
        except FileNotFoundError:
            return None

    def pause(self, reason: str, resume_at: float | None = None) -> None:
        """Write the interrupt file (no new claims). With ``resume_at`` the coordinator lifts it then."""
        text = reason.strip()
        if resume_at is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resume_at))
            text += f"\nresume-at: {resume_at:.0f} ({stamp})"
        from harness.queue.fsops import write_atomic

        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.interrupt_file, text.encode() + b"\n", tmp_dir=self.state_dir,
                     durable=False)

    def resume(self) -> bool:
        """Remove the interrupt file; True if it was there."""
        try:
            self.interrupt_file.unlink()
        except FileNotFoundError:
            return False
        return True

    def resume_at(self) -> float | None:
        """The automatic resume time written by :meth:`pause`, if any."""
        reason = self.interrupt_reason() or ""
        for line in reason.splitlines():
            if line.startswith("resume-at: "):
                try:
                    return float(line.split()[1])
                except (IndexError, ValueError):
                    return None
        return None

    def shift_resume_at(self, seconds: float) -> None:
        """Move the automatic resume time of the pause by ``seconds`` (the clock stepped)."""
        reason, resume_at = self.interrupt_reason(), self.resume_at()
        if reason is None or resume_at is None:
            return
        kept = "\n".join(line for line in reason.splitlines() if not line.startswith("resume-at: "))
        self.pause(kept, resume_at + seconds)

    def log_event(self, event: str, /, **fields: Any) -> None:
        append_event(self.events_file, event, **fields)


def append_event(log: Path, event: str, /, **fields: Any) -> None:
    """Append one JSON line with a single O_APPEND write (lines from many processes never mix)."""
    line = orjson.dumps({"ts": round(time.time(), 3), "event": event, "pid": os.getpid(),
                         **fields}) + b"\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class EventTail:
    """Reads the lines appended to an event log since the last call."""

    def __init__(self, path: Path, from_end: bool = True) -> None:
        self.path = path
        self.offset = path.stat().st_size if from_end and path.exists() else 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out
