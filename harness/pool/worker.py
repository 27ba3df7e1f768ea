"""One worker process: claim, run the attempt in its own worktree, record, repeat.

Started by the coordinator as ``python -m harness.pool.worker --root R --id w1
--generation G``. The worker

- holds ``state/workers/<id>.lock`` for its whole life (proof of life);
- rewrites ``state/heartbeats/<id>.json`` with a rising counter and what its
  agent is doing (last tool, turns, tokens);
- records each claim in its heartbeat (``item``) right after the claim
  rename, so the coordinator knows the owner;
- on SIGTERM stops claiming and finishes its current item;
- stops claiming and exits when the coordinator has been gone too long.

A worker never records the outcome of an attempt it no longer owns: the
queue raises Fenced and only a ``fenced`` result.json is written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from harness import config as config_mod
from harness.agents import orphans
from harness.config import Config
from harness.liveness import heartbeat, hosts
from harness.liveness.process import ProcessIdentity, hold_lock
from harness.paths import UnsafePath, is_unsafe, private_files
from harness.pool.attempt import PAUSING, Attempt, AttemptRunner
from harness.pool.faults import Backoff
from harness.queue.core import Claim, Fenced, Queue
from harness.queue.names import ItemName
from harness.repo import worktrees
from harness.repo.reuse import Reuse
from harness.repo.integration import attempt_branch, item_branch
from harness.workspace import Workspace

EXIT_SLOT_TAKEN = 3
EXIT_SLOT_UNSAFE = 4  # the slot's worktree path is a symlink or outside the workspace
IDLE_POLL = 0.1
ORPHAN_DEATH_WAIT = 5.0  # seconds to wait for killed leftovers to be gone
RECORD_RETRY_FOR = 300.0  # seconds to keep retrying the record of an outcome through a fault
RATE_LIMIT_DEFAULT_PAUSE = 900.0  # seconds, when the agent does not say when its quota resets



class Worker:
    def __init__(self, ws: Workspace, cfg: Config, worker_id: str, generation: str,
                 host_generation: str = "") -> None:
        self.ws, self.cfg, self.id, self.generation = ws, cfg, worker_id, generation
        self.host_generation = host_generation  # with a host: buried -> stop
        self.queue = Queue(ws.queue_dir, **config_mod.queue_options(cfg),
                           on_junk=lambda text: self.log("junk", action=text))
        self.hb = heartbeat.HeartbeatWriter(
            ws.heartbeat_file(worker_id), ws.tmp_dir, worker=worker_id, generation=generation,
            **ProcessIdentity.of().as_record(), state="starting", item=None,
            **({"host_generation": host_generation} if ws.host else {}))
        self.repo = (ws.root / cfg.git.repo).resolve()
        self.template_path = ws.root / cfg.paths.bootstrap
        self.stopping = False
        self.committed_clean = False  # our last commit_attempt left the worktree clean
        # What git last said of our worktree, and our ref-update streams ([git] reuse).
        self.reuse = Reuse() if cfg.git.reuse else None
        self.runner = AttemptRunner(self)
        self._last_beat = 0.0
        self._idle_unwritten = False  # an attempt ended; the heartbeat still names its item
        self._coordinator_gone_since: float | None = None
        self._coordinator_checked = -1e9
        self._buried_checked = -1e9
        self._buried = False
        self.refused: str | None = None  # why this slot may not be used, once found
        self.faults: dict[str, str] = {}  # operation -> its last error, until it works again
        self.events_lost = 0
        self.backoff = Backoff()
        self._claiming: ItemName | None = None  # claimed, not yet recorded in the heartbeat

    # -- loop ----------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.beat(force=True, state="idle")
        self.log("worker-start", generation=self.generation)
        if not self._slot_is_safe():
            return self._refuse()
        orphans.become_subreaper()  # escaped agent processes come back to this worker
        # Holding the slot lock proves the previous holder of this worktree is dead: what
        # still runs with its marks is left over, and must not outlive into the next attempt.
        self._kill_leftovers("left by an earlier worker in this slot", [
            p for p in orphans.marked(self.ws.root)
            if p.worker == self.id and p.generation != self.generation])
        worktrees.remove_stale_index_lock(self.ws.worktree(self.id), owner_dead=True)
        reason = "stopped"
        while not self.stopping:
            if self.coordinator_gone():
                reason = "coordinator gone"
                break
            if self.buried():
                reason = "host declared dead by another host"
                break
            if not self._slot_is_safe():
                return self._refuse()
            if self.faults:  # our writes fail: wait, then claim only if the heartbeat works
                time.sleep(self.backoff.next())
                if not self.beat(force=True):
                    continue
            paused = self.ws.interrupt_reason()
            claim = None if paused else self._claim()
            if claim is None:
                self.beat(force=self._idle_unwritten, state="paused" if paused else "idle",
                          doing=paused, item=None,
                          item_id=None, attempt=None)
                time.sleep(IDLE_POLL)
                continue
            self.process(claim)
        if self.refused:
            return self._refuse()
        self.log("worker-exit", generation=self.generation, reason=reason)
        self._close_reuse()
        self.hb.remove()
        return 0

    def _close_reuse(self) -> None:
        if self.reuse is not None:
            self.reuse.close()

    def _slot_is_safe(self) -> bool:
        """The worktree path is inside the workspace through no symlink (checked with lstat
        on every loop: a link may appear at any time)."""
        self.refused = self.refused or is_unsafe(self.ws.root, self.ws.worktree(self.id))
        return self.refused is None

    def _refuse(self) -> int:
        """Stop without claiming: the coordinator starts no worker in this slot until the
        operator fixes the path, so no item is burned on it."""
        self._close_reuse()
        self.log("slot-refused", generation=self.generation,
                          path=str(self.ws.worktree(self.id)), why=self.refused)
        self.beat(force=True, state="refused", doing=self.refused, item=None, item_id=None,
                  attempt=None)
        return EXIT_SLOT_UNSAFE

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def beat(self, force: bool = False, **fields: Any) -> bool:
        """Update the heartbeat record; write it if forced or the interval has passed.

        False if the write failed (a full disk, a read-only state/): the worker then
        claims nothing until a write succeeds (see run), and an attempt in flight goes on.
        """
        self.hb.record.update(fields)
        now = time.monotonic()
        if force or now - self._last_beat >= self.cfg.run.heartbeat_interval:
            try:
                self.hb.beat()
            except OSError as exc:
                self._fault("heartbeat", exc)
                return False
            self._last_beat = now
            self._idle_unwritten = False
            self._fault_cleared("heartbeat")
        return True

    def _fault(self, what: str, exc: OSError) -> None:
        """A write of this worker failed: remember it, say it once in the worker's log."""
        text = str(exc)
        if self.faults.get(what) != text:
            try:
                print(f"worker {self.id}: {what}: {text}; backing off", file=sys.stderr,
                      flush=True)
            except OSError:
                pass  # the log file is on the full disk too
        self.faults[what] = text

    def _fault_cleared(self, what: str) -> None:
        """``what`` worked again: say so once the last fault is gone."""
        fault = self.faults.pop(what, None)
        if fault is not None and not self.faults:
            self.backoff.reset()
            self.log("write-fault-cleared", fault=f"{what}: {fault}",
                     events_lost=self.events_lost)
            self.events_lost = 0

    def log(self, kind: str, /, **fields: Any) -> None:
        """An event in state/events.jsonl; one that cannot be written is counted, not fatal."""
        try:
            self.ws.log_event(kind, worker=self.id, **fields)
        except OSError as exc:
            self.events_lost += 1
            self._fault("event log", exc)
            return
        if self.faults:
            self._fault_cleared("event log")

    def coordinator_gone(self) -> bool:
        """True once the coordinator has been gone for ``coordinator_gone_after``.

        Probed at most once per heartbeat interval: the idle loop polls ten times a
        second, and the limit is measured in tens of seconds.
        """
        now = time.monotonic()
        if now - self._coordinator_checked < self.cfg.run.heartbeat_interval:
            return False
        self._coordinator_checked = now
        record = heartbeat.read(self.ws.coordinator_file)
        ident = ProcessIdentity.from_record(record) if record else None
        if ident is not None and ident.is_running() is not False:
            self._coordinator_gone_since = None
            return False
        if self._coordinator_gone_since is None:
            self._coordinator_gone_since = now
        return now - self._coordinator_gone_since > self.cfg.run.coordinator_gone_after

    def _claim(self) -> Claim | None:
        """The next claim, or None; a fault of the machine is noted, never raised.

        A claim whose heartbeat record cannot be written is given back at once,
        uncounted: the coordinator would otherwise revoke it as an orphan, counted.
        """
        self._claiming = None
        try:
            claim = self.queue.claim(on_claim=self._record_claim)
            self._fault_cleared("claim")
            return claim
        except OSError as exc:
            self._fault("claim", exc)
            if self._claiming is not None:
                try:
                    self.queue.revoke(self._claiming, f"worker {self.id} could not record the"
                                      f" claim: {exc}", count=False)
                except OSError:
                    pass  # the coordinator revokes it as an orphan
            return None

    def buried(self) -> bool:
        """True once another host has declared this host dead (liveness.hosts): claim
        nothing more. The tombstone is read at most once per heartbeat interval; once
        seen, the answer stays True (the attempt's fence check and the loop both ask: a
        "not yet" from the rate limit right after the attempt saw it let the loop claim)."""
        if not self.ws.host:
            return False
        now = time.monotonic()
        if self._buried or now - self._buried_checked < self.cfg.run.heartbeat_interval:
            return self._buried
        self._buried_checked = now
        self._buried = hosts.buried(self.ws, self.ws.host, self.host_generation) is not None
        return self._buried

    def _record_claim(self, name: ItemName) -> None:
        self._claiming = name
        if not self.beat(force=True, state="working", item=str(name), item_id=name.id,
                         attempt=name.attempt, claimed_at=time.time(), doing="claimed"):
            raise OSError(self.faults.get("heartbeat", "the heartbeat could not be written"))

    # -- one attempt ---------------------------------------------------------

    def process(self, claim: Claim) -> None:
        started = time.time()
        log_dir = self.ws.attempt_dir(claim.id, claim.attempt)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / "item.json").write_bytes(claim.item.to_json())
        except OSError as exc:  # the machine's fault, not the item's: give it back uncounted
            self._fault("attempt logs", exc)
            self._give_back_now(claim, f"could not write {log_dir}: {exc}")
            return
        self.log("claim", item=claim.id, attempt=claim.attempt)
        try:
            att = self.runner.run(claim, log_dir)
        except UnsafePath as exc:
            att = self._give_back(claim, exc)
        except Exception as exc:  # noqa: BLE001 -- an item must never kill its worker
            att = Attempt().end("failed", _harness_error(exc, log_dir))
        queue_state = self._record_retrying(claim, att)
        self._write_results(claim, att, log_dir, started, queue_state)
        # Written by the next claim's beat, or forced by the loop if nothing is claimed.
        self.beat(state="idle", item=None, item_id=None, attempt=None,
                  claimed_at=None, doing=None, agent_pid=None, agent_start=None,
                  tokens=None, cost_usd=None, turns=None, last_tool=None)
        self._idle_unwritten = True
        # What left the agent's process group and lost its parent is now our child.
        kids = orphans.children()
        self._kill_leftovers(f"escaped from {claim.id}~{claim.attempt}",
                             orphans.marked(self.ws.root, kids))
        orphans.reap(kids)  # every subprocess of this worker has been waited for

    def _write_results(self, claim: Claim, att: Attempt, log_dir: Path, started: float,
                       queue_state: str) -> None:
        """metrics.json, result.json (last: its presence means the attempt ended), the event.

        Evidence, not state: a write that fails is reported, and the queue already holds
        the outcome.
        """
        metrics = att.stream.metrics.as_dict()
        metrics["duration_s"] = round(time.time() - started, 3)
        no_changes = att.reason == "succeeded" and att.sha is not None and att.sha == att.base
        result = {"item": claim.id, "attempt": claim.attempt, "worker": self.id,
                  "generation": self.generation, "reason": att.reason, "detail": att.detail,
                  "queue": queue_state, "branch": attempt_branch(claim.id, claim.attempt),
                  "commit": att.sha, "base": att.base, "session_id": att.stream.session_id,
                  "resumed_from": att.resumed, "no_changes": no_changes,
                  "started_at": started, "ended_at": time.time()}
        try:
            _write_json(log_dir / "metrics.json", metrics)
            _write_json(log_dir / "result.json", result)
        except OSError as exc:
            self._fault("result files", exc)
        self.log("attempt-end", item=claim.id, attempt=claim.attempt, reason=att.reason,
                 queue=queue_state, detail=att.detail[:500], no_changes=no_changes,
                 metrics={k: metrics[k] for k in ("input_tokens", "output_tokens",
                                                  "cache_creation_tokens", "cache_read_tokens",
                                                  "cost_usd")})

    def _record_retrying(self, claim: Claim, att: Attempt) -> str:
        """:meth:`record`, retried with backoff while a fault of the machine stops it and
        the claim is still ours, for up to RECORD_RETRY_FOR seconds; then the claim is left
        for the coordinator to revoke (it runs again: nothing is lost)."""
        deadline = time.monotonic() + RECORD_RETRY_FOR
        while True:
            try:
                return self.record(claim, att)
            except OSError as exc:
                self._fault("record the outcome", exc)
                if time.monotonic() > deadline or not claim.is_live():
                    att.end(att.reason, f"{att.detail}; the outcome could not be recorded: {exc}")
                    return "none"
                time.sleep(self.backoff.next())

    def _give_back_now(self, claim: Claim, why: str) -> None:
        try:
            claim.release(self.backoff.next())
        except (OSError, Fenced):
            pass  # still in claimed/: the coordinator revokes it as an orphan
        self.log("released", item=claim.id, attempt=claim.attempt, why=why)

    def _give_back(self, claim: Claim, exc: UnsafePath) -> Attempt:
        """The worktree turned into a symlink after the claim: return the item uncounted,
        refuse the slot."""
        self.refused = exc.reason
        self.stopping = True
        return Attempt().end("released", f"slot refused: {exc}")

    def _kill_leftovers(self, why: str, found: list[orphans.Marked]) -> None:
        """Kill processes of earlier attempts before the worktree is touched again."""
        killed = orphans.kill(found)
        if not killed:
            return
        self.log("orphans-killed", why=why,
                          pids=[p.pid for p in killed],
                          owners=sorted({f"{p.item}~{p.attempt}" for p in killed}))
        pids = [p.pid for p in killed]
        deadline = time.monotonic() + ORPHAN_DEATH_WAIT
        while time.monotonic() < deadline and orphans.marked(self.ws.root, pids):
            time.sleep(0.01)

    def record(self, claim: Claim, att: Attempt) -> str:
        """Move the claim to its outcome; return the queue state it went to."""
        try:
            if att.reason == "fenced":
                raise Fenced(claim.path, att.detail)
            if att.reason == "succeeded":
                return self._complete(claim, att)
            if att.reason == "rate_limited":
                return self._pause_for_quota(claim, att)
            if att.reason in PAUSING:
                return self._pause_for_fix(claim, att)
            if att.reason == "overloaded":
                return self._back_off(claim, att)
            if att.reason == "released":
                claim.release(0.0)
                return "waiting"  # due at once, this attempt not counted
            if att.reason == "prompt_too_long":  # the same prompt fails the same way
                return claim.fail(f"{att.reason}: {att.detail}", retry=False)
            if att.reason == "cancelled":
                (self.ws.cancel_dir / claim.id).unlink(missing_ok=True)
                return claim.fail(f"cancelled: {att.detail}", retry=False)
            return claim.fail(f"{att.reason}: {att.detail}")
        except Fenced:
            att.end("fenced", "the claim was revoked; this attempt's outcome is discarded")
            return "none"

    def _complete(self, claim: Claim, att: Attempt) -> str:
        """Set ``harness/<id>`` to the attempt's commit, then move the claim to done/.

        The branch first: an item in done/ always has its result in git. A failed
        branch update fails the attempt (retried); a claim revoked meanwhile undoes
        the branch update, unless another attempt moved the branch since.
        """
        branch = item_branch(claim.id)
        try:
            previous = worktrees.accept(self.repo, branch, att.sha or "",
                                        on_stale_lock=self._stale_lock_removed, reuse=self.reuse)
        except worktrees.GitError as exc:
            att.end("failed", f"could not set branch {branch}: {exc}")
            return claim.fail(f"failed: {att.detail}")
        try:
            claim.complete()
        except Fenced:
            worktrees.restore_branch(self.repo, branch, previous, expect=att.sha or "")
            raise
        return "done"

    def _stale_lock_removed(self, lock: Path) -> None:
        self.log("stale-lock-removed", lock=str(lock),
                          why="older than every running git process")

    def _pause_for_fix(self, claim: Claim, att: Attempt) -> str:
        """auth_failed, quota: every item would fail the same way. Pause the pool with the
        agent's message and the fix; the item waits, its attempt not counted."""
        fix = att.stream.FIXES.get(att.reason, "fix the agent's account")
        claim.release(0.0)
        self.ws.pause(f"{att.reason}: {att.detail} (item {claim.id}, worker {self.id}). Fix:"
                      f" {fix}; then `parallel-harness resume`")
        self.log("agent-paused-pool", item=claim.id, reason=att.reason)
        return "waiting"

    def _back_off(self, claim: Claim, att: Attempt) -> str:
        """overloaded: the API's trouble, not the item's. Retry later with backoff, the
        attempt not counted, up to ``[agent] transient_retries`` free attempts per item."""
        if claim.name.free >= self.cfg.agent.transient_retries:
            return claim.fail(f"overloaded: {att.detail} (after {claim.name.free} free"
                              " retries, [agent] transient_retries)")
        claim.release(self.queue.backoff(claim.name.free + 1))
        return "waiting"

    def _pause_for_quota(self, claim: Claim, att: Attempt) -> str:
        """Pause the whole pool until the quota resets; the item waits, its attempt not counted."""
        resume = att.resets_at or time.time() + RATE_LIMIT_DEFAULT_PAUSE
        delay = max(0.0, resume - time.time())
        claim.release(delay)
        self.ws.pause(f"rate limited: {att.detail} (item {claim.id}, worker {self.id})", resume)
        self.log("rate-limited", item=claim.id, resume_at=resume)
        return "waiting"


def _harness_error(exc: Exception, log_dir: Path) -> str:
    """Keep the traceback beside the attempt's logs; the reason names it."""
    path = log_dir / "harness-error.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return f"harness error: {exc!r}; traceback in {path}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.pool.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("HARNESS_ROOT", "."))
    parser.add_argument("--id", required=True, help="worker slot, e.g. w1")
    parser.add_argument("--generation", default=os.urandom(4).hex())
    parser.add_argument("--host", default=None, help="this host's id (multi-host workspaces)")
    parser.add_argument("--host-generation", default="", help="its coordinator's generation")
    args = parser.parse_args(argv)
    private_files()  # started with the user's umask (see Coordinator.spawn)
    ws = Workspace.at(args.root, args.host)
    try:
        cfg = config_mod.load(ws.config_file)
    except config_mod.ConfigError as exc:
        print(f"worker {args.id}: {exc}", file=sys.stderr)
        return 2
    ws.make_dirs()
    lock_fd = hold_lock(ws.worker_lock(args.id))
    if lock_fd is None:
        print(f"worker {args.id}: slot is held by another live worker"
              f" ({ws.worker_lock(args.id)})", file=sys.stderr)
        return EXIT_SLOT_TAKEN
    return Worker(ws, cfg, args.id, args.generation, args.host_generation).run()


if __name__ == "__main__":
    sys.exit(main())
