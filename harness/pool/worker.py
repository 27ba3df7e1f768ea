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
import re
import signal
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil

from harness.agents import orphans, presets, prompts, runner, session, streams
from harness.liveness import heartbeat, hosts
from harness.repo import remote, worktrees
from harness import config as config_mod
from harness.config import Config
from harness.repo.integration import attempt_branch, item_branch
from harness.liveness.process import ProcessIdentity, hold_lock
from harness.pool.faults import Backoff
from harness.paths import UnsafePath, check_inside, is_unsafe, private_files
from harness.queue.names import ItemName
from harness.queue.core import Claim, Fenced, Queue
from harness.workspace import Workspace

EXIT_SLOT_TAKEN = 3
EXIT_SLOT_UNSAFE = 4  # the slot's worktree path is a symlink or outside the workspace
IDLE_POLL = 0.1
ORPHAN_DEATH_WAIT = 5.0  # seconds to wait for killed leftovers to be gone
RECORD_RETRY_FOR = 300.0  # seconds to keep retrying the record of an outcome through a fault
RATE_LIMIT_DEFAULT_PAUSE = 900.0  # seconds, when the agent does not say when its quota resets
# Reasons after which a retry may continue the session ([agent] resume): nothing was wrong
# with what the session had done so far.
RESUMABLE = frozenset({"overloaded", "stalled", "rate_limited"})
# Reasons every other item would meet too: the pool pauses, with the fix, until `resume`.
PAUSING = frozenset({"auth_failed", "quota"})
STOP = "stop"  # _poll's abort when the stream says the session must end now
STDERR_TAIL_BYTES = 8192
STDERR_TAIL_LINES = 3
# Stack frames say where a CLI died, not why: left out of the tail (Rust, Node, Python).
_FRAME_RE = re.compile(r"^\s*(?:\d+: |at |File \"|Stack backtrace:|Traceback )")


class Attempt:
    """What one attempt produced: terminal reason, detail, commit, metrics, and the
    session (its parser; ``base``, the commit the item's work started from; ``resumed``,
    the earlier attempt whose session it continued)."""

    def __init__(self, stream: session.StreamState | None = None) -> None:
        self.reason, self.detail = "failed", ""
        self.sha: str | None = None
        self.stream = stream or session.StreamState()
        self.resets_at: float | None = None
        self.base: str | None = None
        self.resumed: dict[str, Any] | None = None

    def end(self, reason: str, detail: str) -> Attempt:
        self.reason, self.detail = reason, detail
        return self


class Worker:
    def __init__(self, ws: Workspace, cfg: Config, worker_id: str, generation: str,
                 host_generation: str = "") -> None:
        self.ws, self.cfg, self.id, self.generation = ws, cfg, worker_id, generation
        self.host_generation = host_generation  # with a host: buried -> stop
        self.queue = Queue(ws.queue_dir, **config_mod.queue_options(cfg),
                           on_junk=lambda text: self.log("junk", action=text))
        self.hb = heartbeat.HeartbeatWriter(
            ws.heartbeat_file(worker_id), ws.tmp_dir, worker=worker_id, generation=generation,
            **ProcessIdentity.of().as_record(), state="starting", item=None)
        self.repo = (ws.root / cfg.git.repo).resolve()
        self.template_path = ws.root / cfg.paths.bootstrap
        self.stopping = False
        self._committed_clean = False  # our last commit_attempt left the worktree clean
        self._last_beat = 0.0
        self._coordinator_gone_since: float | None = None
        self._coordinator_checked = -1e9
        self._buried_checked = -1e9
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
                self.beat(state="paused" if paused else "idle", doing=paused, item=None,
                          item_id=None, attempt=None)
                time.sleep(IDLE_POLL)
                continue
            self.process(claim)
        if self.refused:
            return self._refuse()
        self.log("worker-exit", generation=self.generation, reason=reason)
        self.hb.remove()
        return 0

    def _slot_is_safe(self) -> bool:
        """The worktree path is inside the workspace through no symlink (checked with lstat
        on every loop: a link may appear at any time)."""
        self.refused = self.refused or is_unsafe(self.ws.root, self.ws.worktree(self.id))
        return self.refused is None

    def _refuse(self) -> int:
        """Stop without claiming: the coordinator starts no worker in this slot until the
        operator fixes the path, so no item is burned on it."""
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
        nothing more. Checked at most once per heartbeat interval."""
        if not self.ws.host:
            return False
        now = time.monotonic()
        if now - self._buried_checked < self.cfg.run.heartbeat_interval:
            return False
        self._buried_checked = now
        return hosts.buried(self.ws, self.ws.host, self.host_generation) is not None

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
            att = self.attempt(claim, log_dir)
        except UnsafePath as exc:
            att = self._give_back(claim, exc)
        except Exception as exc:  # noqa: BLE001 -- an item must never kill its worker
            att = Attempt().end("failed", _harness_error(exc, log_dir))
        queue_state = self._record_retrying(claim, att)
        self._write_results(claim, att, log_dir, started, queue_state)
        self.beat(force=True, state="idle", item=None, item_id=None, attempt=None,
                  claimed_at=None, doing=None, agent_pid=None, agent_start=None,
                  tokens=None, cost_usd=None, turns=None, last_tool=None)
        # What left the agent's process group and lost its parent is now our child.
        self._kill_leftovers(f"escaped from {claim.id}~{claim.attempt}",
                             orphans.marked(self.ws.root, orphans.children()))
        orphans.reap(orphans.children())  # every subprocess of this worker has been waited for

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

    def attempt(self, claim: Claim, log_dir: Path) -> Attempt:
        """Prepare the worktree, run the agent and verify; never raises for agent trouble.

        A resumed attempt (see :meth:`_resume_point`) starts from the commit of the
        attempt it continues, with that session's id; any other starts at the target.
        """
        agent = self.cfg.agent
        fmt = agent.stream_format
        att = Attempt(streams.new(fmt, tool_timeout=agent.tool_timeout,
                                  max_turns=agent.max_turns) if fmt else None)
        att.resumed = self._resume_point(claim)
        session_id = att.resumed["session_id"] if att.resumed else str(uuid.uuid4())
        try:
            start = att.resumed["commit"] if att.resumed else self._base()
            self.beat(force=True, doing="preparing worktree")
            wt = worktrees.ensure_worktree(self.repo, self.ws.worktree(self.id),
                                           self.cfg.git.target_branch, within=self.ws.root)
            clean, self._committed_clean = self._committed_clean, False
            att.base = worktrees.start_attempt(wt, start, attempt_branch(claim.id, claim.attempt),
                                               assume_clean=clean)
            if att.resumed:
                att.base = att.resumed.get("base") or att.base
            argv, stdin = self._argv(claim, log_dir, session_id, wt, att.resumed)
        except (presets.AgentError, prompts.PromptError) as exc:
            return att.end("failed", str(exc))
        except worktrees.GitError as exc:
            return att.end("failed", f"worktree: {exc}")
        try:
            check_inside(self.ws.root, wt)  # at the moment of use: the agent runs there
            self._run_agent(claim, att, argv, wt, log_dir, session_id, stdin)
        except runner.SpawnError as exc:
            return att.end("failed", str(exc))
        if att.reason in ("fenced", "cancelled", *PAUSING) or (
                att.reason == "rate_limited" and not agent.resume):
            return att  # nothing of this attempt is kept
        check_inside(self.ws.root, wt)  # git add -A runs there
        try:
            att.sha = worktrees.commit_attempt(wt, f"harness: {claim.id} attempt {claim.attempt}"
                                                   f"\n\n{claim.item.title}".strip())
        except worktrees.GitError as exc:
            return att.end("failed", f"commit: {exc}")
        self._committed_clean = not self.cfg.git.verify  # verify may leave files behind
        if att.reason == "succeeded" and self.cfg.git.verify:
            check_inside(self.ws.root, wt)
            self._verify(claim, att, wt, log_dir)
        return att

    def _resume_point(self, claim: Claim) -> dict[str, Any] | None:
        """The session this attempt continues: with ``[agent] resume``, the previous
        attempt's, if it ended for a RESUMABLE reason with a session id and a commit."""
        agent = self.cfg.agent
        if not agent.resume or agent.preset not in ("claude", "codex") or claim.attempt < 2:
            return None
        prev = heartbeat.read(self.ws.attempt_dir(claim.id, claim.attempt - 1) / "result.json")
        if not prev or prev.get("reason") not in RESUMABLE or not prev.get("session_id") \
                or not prev.get("commit"):
            return None
        return {"attempt": claim.attempt - 1, "session_id": prev["session_id"],
                "commit": prev["commit"], "base": prev.get("base"), "reason": prev["reason"]}

    def _give_back(self, claim: Claim, exc: UnsafePath) -> Attempt:
        """The worktree turned into a symlink after the claim: return the item uncounted,
        refuse the slot."""
        self.refused = exc.reason
        self.stopping = True
        return Attempt().end("released", f"slot refused: {exc}")

    def _base(self) -> str:
        """What the attempt starts from: the remote's target as fetched at most
        ``fetch_interval`` ago (one fetch shared by every worker), else the local target."""
        git = self.cfg.git
        if not git.remote:
            return git.target_branch
        self.beat(force=True, doing=f"fetching {git.target_branch} from the remote")
        sha, note = remote.fresh_base(remote.Remote(self.repo, git.remote), git.target_branch,
                                      git.fetch_interval)
        if note:
            self.log("stale-base", note=note)
        return sha or git.target_branch

    def _argv(self, claim: Claim, log_dir: Path, session_id: str, wt: Path,
              resume: dict[str, Any] | None) -> tuple[list[str], Path | None]:
        """The agent's argv and the file it reads as stdin (None: nothing).

        ``prompt.md`` is the rendered template (plus the item's prompt if the template
        leaves it out, for presets that read their prompt on stdin), or, resuming, the
        rendered ``[agent] resume_prompt``. Raises PromptError, AgentError, GitError.
        """
        item, agent = claim.item, self.cfg.agent
        values = prompts.item_values(item, session_id=session_id, attempt=claim.attempt,
                                     worker=self.id)
        prompt_file = log_dir / "prompt.md"
        ctx = {"prompt": item.prompt or item.title, "session_id": session_id,
               "system_prompt_file": str(prompt_file), "prompt_file": str(prompt_file),
               "item_file": str(log_dir / "item.json"), "model": agent.model,
               "worktree": str(wt), "attempt": str(claim.attempt), "item_id": claim.id,
               "python": sys.executable, "resume_session": resume["session_id"] if resume else ""}
        if agent.preset != "shell":
            prompt_file.write_text(self._prompt(values, resume), encoding="utf-8",
                                   errors="replace")
        if agent.preset == "codex":
            git_dir, common = worktrees.git_dirs(wt)
            ctx.update(git_dir=str(git_dir), git_common_dir=str(common))
        stdin = prompt_file if presets.reads_stdin(agent) else None
        return presets.build_argv(agent, item, ctx), stdin

    def _prompt(self, values: dict[str, str], resume: dict[str, Any] | None) -> str:
        if resume:
            return prompts.render(self.cfg.agent.resume_prompt, "[agent] resume_prompt",
                                  {**values, "REASON": resume["reason"]})
        template = prompts.load_template(self.template_path)
        rendered = prompts.render(template, str(self.template_path), values)
        if presets.reads_stdin(self.cfg.agent) and "PROMPT" not in prompts.variables_in(template):
            rendered += "\n\n" + values["PROMPT"]  # stdin is the agent's only prompt
        return rendered

    def _run_agent(self, claim: Claim, att: Attempt, argv: list[str], wt: Path, log_dir: Path,
                   session_id: str, stdin: Path | None) -> None:
        run, agent = self.cfg.run, self.cfg.agent
        streams_ = agent.streams
        env = runner.clean_env({**presets.agent_env(agent), **self._marks(claim),
                                "HARNESS_SESSION_ID": session_id})
        limits = runner.Limits(timeout=run.session_timeout,
                               stall_after=run.stall_after if streams_ else None,
                               result_grace=run.result_grace, log_cap_bytes=run.log_cap_mb * 2**20)
        outcome = runner.run(
            argv, cwd=wt, env=env, limits=limits, poll=min(0.2, run.heartbeat_interval),
            stdout=log_dir / ("events.jsonl" if streams_ else "stdout.log"),
            stderr=log_dir / "stderr.log", preexec=presets.resource_limiter(agent),
            on_start=lambda p: self._agent_started(claim, p),
            on_poll=lambda: self._poll(claim, att),
            on_line=att.stream.feed if streams_ else None, result_seen=att.stream.is_final,
            quiet_allowance=att.stream.quiet_allowance, stdin=stdin)
        att.stream.metrics.truncated_bytes = outcome.truncated_bytes
        tail = _stderr_tail(log_dir / "stderr.log")
        if outcome.aborted == "cancelled":
            att.end("cancelled", "cancelled by the operator (parallel-harness cancel)")
        elif outcome.aborted == STOP and att.stream.stop_now:
            att.end(*att.stream.stop_now)
        elif outcome.aborted:
            att.end("fenced", "the claim was revoked while the agent ran")
        elif streams_:
            att.end(*session.classify(outcome.exit_code, outcome.signal, att.stream,
                                      timed_out=outcome.timed_out, stalled=outcome.stalled,
                                      killed_after_result=outcome.killed_after_result,
                                      stderr_tail=tail))
            if att.stream.rate_limit:
                att.resets_at = att.stream.rate_limit.get("resets_at")
        else:
            att.end(*_classify_exit(outcome, tail))

    def _verify(self, claim: Claim, att: Attempt, wt: Path, log_dir: Path) -> None:
        verify = self.cfg.git.verify
        argv = list(verify) if isinstance(verify, list) else ["/bin/sh", "-c", verify]
        self.beat(force=True, doing="verifying")
        try:
            outcome = runner.run(
                argv, cwd=wt, env=runner.clean_env(self._marks(claim)),
                limits=runner.Limits(timeout=self.cfg.git.verify_timeout),
                poll=min(0.2, self.cfg.run.heartbeat_interval), stdout=log_dir / "verify.log",
                stderr=log_dir / "verify.log", on_start=lambda p: self._agent_started(claim, p),
                on_poll=lambda: self._poll(claim, att))
        except runner.SpawnError as exc:
            att.end("verify_failed", f"verify: {exc}")
            return
        if outcome.aborted:
            att.end(outcome.aborted, f"{outcome.aborted} during verify")
        elif outcome.exit_code != 0:
            how = "timed out" if outcome.timed_out else f"exit {outcome.exit_code}"
            att.end("verify_failed", f"verify {how}; see {log_dir / 'verify.log'}")

    def _marks(self, claim: Claim) -> dict[str, str]:
        """Who owns the process about to start (harness.agents.orphans)."""
        return orphans.marks(self.ws.root, self.id, self.generation, claim.id, claim.attempt)

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

    def _agent_started(self, claim: Claim, proc: psutil.Process) -> None:
        self.beat(force=True, doing="running", agent_pid=proc.pid, agent_start=proc.create_time())
        self.log("agent-start", item=claim.id, attempt=claim.attempt,
                          agent_pid=proc.pid, agent_start=proc.create_time())

    def _poll(self, claim: Claim, att: Attempt) -> str | None:
        """Between agent reads: refresh the heartbeat; abort if the claim was revoked."""
        m = att.stream.metrics
        self.beat(doing=att.stream.activity, last_tool=att.stream.last_tool, turns=m.turns,
                  tokens=m.input_tokens + m.output_tokens + m.cache_creation_tokens
                  + m.cache_read_tokens, cost_usd=round(m.cost_usd, 6),
                  progress_at=time.time())
        if not claim.is_live() or self.buried():
            return "fenced"
        if self.ws.cancel_requested(claim.id):
            return "cancelled"
        if att.stream.stop_now:
            self.beat(force=True, doing=att.stream.activity)  # why it ends, for the operator
            return STOP
        return None

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
                                        on_stale_lock=self._stale_lock_removed)
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


def _classify_exit(outcome: runner.ProcessOutcome, stderr_tail: str = "") -> tuple[str, str]:
    if outcome.timed_out:
        return "timed_out", f"killed after {outcome.duration:.1f}s (session_timeout)"
    if outcome.signal:
        return "crashed", f"agent killed by signal {outcome.signal}"
    if outcome.exit_code == 0:
        return "succeeded", "exit 0"
    tail = " ".join(stderr_tail.split())
    return "failed", f"agent exited with status {outcome.exit_code}" + (
        f"; stderr: {tail[-300:]}" if tail else "")


def _stderr_tail(path: Path) -> str:
    """The last few non-blank lines of an agent's stderr (what it said before it ended)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines()
             if ln.strip() and not _FRAME_RE.match(ln)]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


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
