"""Real processes for the queue proof tests: child entry points and parent bookkeeping.

Run as a script, this module is a child process::

    python tests/procs.py <command> '<json args>'

Each command is a function in COMMANDS below. Children import the queue
fresh, so ``HARNESS_FAILPOINTS`` in their environment arms failpoints in
them only. Every child has its own deadline and gives up (exit 4) instead of
hanging if the parent never releases it.

Imported by the tests, it offers :class:`Procs`, which starts children in
their own sessions, records every one, and kills the recorded process groups
(never anything found by name) at teardown.

Child exit codes: 0 ok, 2 self-check anomaly, 3 Fenced, 4 child deadline,
5 OSError from the queue (the ``raise`` failpoint action), 6 unexpected.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()

BACKLOG_ENV = "HARNESS_TEST_BACKLOG"


def queue_size(default: int) -> int:
    """How many items the hammer and chaos tests put in the queue: ``default`` in the
    suite; ``HARNESS_TEST_BACKLOG`` when bench/backlog_chaos.py runs them at 100,000."""
    return int(os.environ.get(BACKLOG_ENV, "0")) or default


def scaled(seconds: float, default: int) -> float:
    """A hang guard sized for ``default`` items, grown in proportion to queue_size."""
    return seconds * max(1.0, queue_size(default) / default)


EXIT_OK, EXIT_ANOMALY, EXIT_FENCED, EXIT_DEADLINE, EXIT_OSERROR, EXIT_UNEXPECTED = 0, 2, 3, 4, 5, 6


# ---------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.002) -> Any:
    """Poll ``cond`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def touch(path: Path) -> None:
    """Create ``path`` (a barrier or flag file), visible to other processes at once."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)


def publish(path: Path, text: str) -> None:
    """Write ``text`` so a reader that sees ``path`` sees all of it (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.rename(tmp, path)


class Procs:
    """Children started by one test; every pid is recorded and killed by process group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def spawn(self, command: str, args: dict[str, Any] | None = None, *,
              failpoints: str = "", label: str | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "HARNESS_FAILPOINTS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if failpoints:
            env["HARNESS_FAILPOINTS"] = failpoints
        log = self.workdir / f"{label or command}.{len(self.started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), command, orjson.dumps(args or {}).decode()],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=self.workdir, start_new_session=True)
        self.started.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        try:
            return self.logs[proc.pid].read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for ``proc``; on timeout kill its group and fail."""
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise AssertionError(f"child {proc.pid} ({proc.args[2]}) still running after"
                                 f" {timeout}s; killed. Log:\n{self.log(proc)}") from None

    def wait_all(self, procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        return [self.wait(p, max(0.0, deadline - time.monotonic())) for p in procs]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process group of a recorded, not yet reaped child, and reap it.

        A child that poll() has not reaped still holds its pid, so the group id
        cannot have been reused by an unrelated process.
        """
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def kill_all(self) -> None:
        for proc in self.started:
            self.kill(proc)


def status_of(pid: int) -> str | None:
    import psutil

    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None


def wait_stopped(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``proc`` is in the stopped state (SIGSTOP), failing if it exits instead."""
    import psutil

    def stopped() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"child {proc.pid} exited with {proc.returncode}"
                                 " instead of stopping")
        return status_of(proc.pid) == psutil.STATUS_STOPPED

    wait_for(stopped, timeout, f"child {proc.pid} to stop")


def read_report(path: Path) -> list[tuple[str, str]]:
    """The (tag, value) lines a child wrote to its report file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [(line[0], line[2:]) for line in text.splitlines() if line]


# ---------------------------------------------------------------------------
# child side
# ---------------------------------------------------------------------------


class ChildDeadline(Exception):
    pass


def _deadline(seconds: float) -> Callable[[], None]:
    end = time.monotonic() + seconds

    def check() -> None:
        if time.monotonic() > end:
            raise ChildDeadline(f"child deadline of {seconds}s passed")
    return check


def _wait_file(path: str, check: Callable[[], None], spin: bool = False) -> None:
    while not os.path.exists(path):
        check()
        if spin:
            os.sched_yield()
        else:
            time.sleep(0.0005)


def cmd_hammer(a: dict[str, Any]) -> int:
    """Claim and finish items until the queue is empty (or, with ``stop``, until told).

    Reports one line per event to ``out``: ``C`` claimed, ``S`` stuck (works
    until its claim is revoked), ``D`` done, ``R`` failed with retry, ``X``
    dead-lettered, ``F`` fenced, ``A`` anomaly.
    ``strict`` (nobody revokes): any Fenced or vanished claim is an anomaly.
    """
    from harness.queue.core import Fenced, Queue

    check = _deadline(a.get("deadline", 60))
    q = Queue(Path(a["root"]), backoff_base=a.get("backoff", 0.001), backoff_max=0.01)
    rng = random.Random(a.get("seed", 0))
    fail_rate, stuck_rate = a.get("fail_rate", 0.0), a.get("stuck_rate", 0.0)
    strict, stop = a.get("strict", True), a.get("stop")
    seen: set[str] = set()
    anomalies = 0
    with open(a["out"], "w", buffering=1) as out:
        def anomaly(name: str, msg: str) -> None:
            nonlocal anomalies
            anomalies += 1
            out.write(f"A {name}: {msg}\n")

        touch(Path(a["ready"]))
        _wait_file(a["start"], check)
        while True:
            check()
            claim = q.claim()
            if claim is None:
                if stop is None or os.path.exists(stop):
                    break
                time.sleep(0.001)
                continue
            key = str(claim.name)
            out.write(f"C {key}\n")
            if key in seen:
                anomaly(key, "claimed twice by this process")
            seen.add(key)
            if claim.item.id != claim.id:
                anomaly(key, f"file holds item {claim.item.id!r}")
            if strict and not claim.is_live():
                anomaly(key, "claim vanished right after claiming")
            stuck = bool(stuck_rate) and rng.random() < stuck_rate
            if stuck:
                # A hung attempt: it works on until the coordinator takes the claim back.
                out.write(f"S {key}\n")
                while claim.is_live():
                    check()
                    time.sleep(0.001)
            try:
                if fail_rate and rng.random() < fail_rate:
                    outcome = claim.fail("chaos", retry=True)
                    out.write(f"{'R' if outcome == 'retry' else 'X'} {key}\n")
                else:
                    done = claim.complete()
                    out.write(f"D {key}\n")
                    if strict and not done.exists():
                        anomaly(key, "done/ name missing right after complete")
            except Fenced:
                out.write(f"F {key}\n")
                if strict:
                    anomaly(key, "fenced although nobody revokes")
            else:
                if stuck:
                    anomaly(key, "recorded an outcome after its claim was revoked")
    return EXIT_ANOMALY if anomalies else EXIT_OK


def cmd_op(a: dict[str, Any]) -> int:
    """One queue operation for a failpoint scenario; exit 5 on OSError (failpoint raise)."""
    from harness.queue.core import Queue

    q = Queue(Path(a["root"]), backoff_base=0.0)
    op = a["op"]
    try:
        for _ in range(a.get("repeat", 1)):
            if op == "enqueue":
                q.enqueue({"id": a["id"], "priority": a.get("priority", 5)})
            elif op == "claim":
                claim = q.claim()
                assert claim is not None, "nothing to claim"
            elif op in ("complete", "fail"):
                claim = q.claim()
                assert claim is not None, "nothing to claim"
                if op == "complete":
                    claim.complete()
                else:
                    claim.fail("scenario failure", retry=False)
            elif op == "revoke":
                q.revoke(a["name"], "scenario revoke")
            elif op == "promote":
                assert q.promote(), "nothing promoted"
            elif op == "bulk":
                with q.batch(atomic=a["atomic"]) as batch:
                    batch.add(*q.prepare({"id": a["id"], "priority": a.get("priority", 5)}))
                    batch.commit()
            else:
                raise ValueError(f"unknown op {op!r}")
    except OSError as exc:
        print(f"OSError errno={exc.errno} {exc}", flush=True)
        return EXIT_OSERROR if exc.errno == errno.EIO else EXIT_UNEXPECTED
    return EXIT_OK


def cmd_claim_then(a: dict[str, Any]) -> int:
    """Claim one item, publish its name to ``claimed_file``, optionally stop, then finish.

    ``stop_self``: SIGSTOP itself after publishing (a zombie that later wakes).
    ``then``: "complete" or "fail". Exit 3 if Fenced, 0 if the outcome was recorded.
    Reports ``live=<bool>`` (is_live() just before finishing) to ``out``.
    """
    from harness.queue.core import Fenced, Queue

    q = Queue(Path(a["root"]))
    claim = q.claim()
    if claim is None:
        print("nothing to claim", flush=True)
        return EXIT_UNEXPECTED
    publish(Path(a["claimed_file"]), str(claim.name))
    if a.get("stop_self"):
        os.kill(os.getpid(), signal.SIGSTOP)
    live = claim.is_live()
    try:
        if a.get("then", "complete") == "complete":
            claim.complete()
        else:
            claim.fail("zombie failure", retry=False)
    except Fenced:
        publish(Path(a["out"]), f"live={live} fenced")
        return EXIT_FENCED
    publish(Path(a["out"]), f"live={live} recorded")
    return EXIT_OK


def cmd_race(a: dict[str, Any]) -> int:
    """One side of the complete-vs-revoke race, for ``rounds`` rounds.

    Round r: the claimer (``role`` "complete") waits for ``begin-r`` (so the
    parent sees a quiet queue between rounds), claims one item and publishes
    ``claimed-r``; the revoker reads it and touches ``armed-r``; both spin on
    ``go-r`` (the parent creates it when both are armed), then the claimer
    completes and the revoker revokes. Each writes ``<role>-r`` with its result.
    """
    from harness.queue.core import Fenced, Queue

    check = _deadline(a.get("deadline", 60))
    q = Queue(Path(a["root"]))
    d = Path(a["dir"])
    role = a["role"]
    for r in range(a["rounds"]):
        if role == "complete":
            _wait_file(str(d / f"begin-{r}"), check)
            claim = q.claim()
            if claim is None:
                print(f"round {r}: nothing to claim", flush=True)
                return EXIT_UNEXPECTED
            publish(d / f"claimed-{r}", str(claim.name))
            _wait_file(str(d / f"go-{r}"), check, spin=True)
            try:
                claim.complete()
                result = "done"
            except Fenced:
                result = "fenced"
        else:
            _wait_file(str(d / f"claimed-{r}"), check)
            name = (d / f"claimed-{r}").read_text()
            touch(d / f"armed-{r}")
            _wait_file(str(d / f"go-{r}"), check, spin=True)
            result = q.revoke(name, "race")
        publish(d / f"{role}-{r}", result)
    return EXIT_OK


COMMANDS: dict[str, Callable[[dict[str, Any]], int]] = {
    "hammer": cmd_hammer,
    "op": cmd_op,
    "claim_then": cmd_claim_then,
    "race": cmd_race,
}


def main(argv: list[str]) -> int:
    command, args = argv[1], orjson.loads(argv[2]) if len(argv) > 2 else {}
    try:
        return COMMANDS[command](args)
    except ChildDeadline as exc:
        print(exc, flush=True)
        return EXIT_DEADLINE


if __name__ == "__main__":
    sys.exit(main(sys.argv))
