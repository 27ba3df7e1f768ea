"""One attempt of one item, in the worker's worktree: prepare, run the agent, verify.

:class:`AttemptRunner` does what happens between a claim and its record: the
worktree at the right base (the remote's fresh target, or a resumed attempt's
commit), the prompt and argv, the agent behind its gate with its limits and
stream parser, the commit, verify. It never raises for agent trouble; every
outcome is an :class:`Attempt` with one terminal reason (pool.worker records it).
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from harness.agents import orphans, presets, prompts, runner, session, streams
from harness.liveness import heartbeat
from harness.paths import check_inside
from harness.queue.core import Claim
from harness.repo import remote, worktrees
from harness.repo.integration import attempt_branch

if TYPE_CHECKING:
    from harness.pool.worker import Worker

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


class AttemptRunner:
    """Runs the attempts of one worker (its config, workspace, heartbeat and log)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    def run(self, claim: Claim, log_dir: Path) -> Attempt:
        """Prepare the worktree, run the agent and verify; never raises for agent trouble.

        A resumed attempt (see :meth:`_resume_point`) starts from the commit of the
        attempt it continues, with that session's id; any other starts at the target.
        """
        agent = self.w.cfg.agent
        fmt = agent.stream_format
        att = Attempt(streams.new(fmt, tool_timeout=agent.tool_timeout,
                                  max_turns=agent.max_turns) if fmt else None)
        att.resumed = self._resume_point(claim)
        session_id = att.resumed["session_id"] if att.resumed else str(uuid.uuid4())
        try:
            start = att.resumed["commit"] if att.resumed else self._base()
            self.w.beat(doing="preparing worktree")  # written if due: the claim beat just was
            wt = worktrees.ensure_worktree(self.w.repo, self.w.ws.worktree(self.w.id),
                                           self.w.cfg.git.target_branch, within=self.w.ws.root)
            clean, self.w.committed_clean = self.w.committed_clean, False
            att.base = worktrees.start_attempt(wt, start, attempt_branch(claim.id, claim.attempt),
                                               assume_clean=clean, reuse=self.w.reuse)
            if att.resumed:
                att.base = att.resumed.get("base") or att.base
            argv, stdin = self._argv(claim, log_dir, session_id, wt, att.resumed)
        except (presets.AgentError, prompts.PromptError) as exc:
            return att.end("failed", str(exc))
        except worktrees.GitError as exc:
            return att.end("failed", f"worktree: {exc}")
        try:
            check_inside(self.w.ws.root, wt)  # at the moment of use: the agent runs there
            self._run_agent(claim, att, argv, wt, log_dir, session_id, stdin)
        except runner.SpawnError as exc:
            return att.end("failed", str(exc))
        if att.reason in ("fenced", "cancelled", *PAUSING) or (
                att.reason == "rate_limited" and not agent.resume):
            return att  # nothing of this attempt is kept
        check_inside(self.w.ws.root, wt)  # git add -A runs there
        try:
            att.sha = worktrees.commit_attempt(wt, f"harness: {claim.id} attempt {claim.attempt}"
                                                   f"\n\n{claim.item.title}".strip(),
                                               reuse=self.w.reuse)
        except worktrees.GitError as exc:
            return att.end("failed", f"commit: {exc}")
        self.w.committed_clean = not self.w.cfg.git.verify  # verify may leave files behind
        if att.reason == "succeeded" and self.w.cfg.git.verify:
            check_inside(self.w.ws.root, wt)
            self._verify(claim, att, wt, log_dir)
        return att

    def _resume_point(self, claim: Claim) -> dict[str, Any] | None:
        """The session this attempt continues: with ``[agent] resume``, the previous
        attempt's, if it ended for a RESUMABLE reason with a session id and a commit."""
        agent = self.w.cfg.agent
        if not agent.resume or agent.preset not in ("claude", "codex") or claim.attempt < 2:
            return None
        prev = heartbeat.read(self.w.ws.attempt_dir(claim.id, claim.attempt - 1) / "result.json")
        if not prev or prev.get("reason") not in RESUMABLE or not prev.get("session_id") \
                or not prev.get("commit"):
            return None
        return {"attempt": claim.attempt - 1, "session_id": prev["session_id"],
                "commit": prev["commit"], "base": prev.get("base"), "reason": prev["reason"]}

    def _base(self) -> str:
        """What the attempt starts from: the remote's target as fetched at most
        ``fetch_interval`` ago (one fetch shared by every worker), else the local target."""
        git = self.w.cfg.git
        if not git.remote:
            return git.target_branch
        self.w.beat(force=True, doing=f"fetching {git.target_branch} from the remote")
        sha, note = remote.fresh_base(remote.Remote(self.w.repo, git.remote), git.target_branch,
                                      git.fetch_interval)
        if note:
            self.w.log("stale-base", note=note)
        return sha or git.target_branch

    def _argv(self, claim: Claim, log_dir: Path, session_id: str, wt: Path,
              resume: dict[str, Any] | None) -> tuple[list[str], Path | None]:
        """The agent's argv and the file it reads as stdin (None: nothing).

        ``prompt.md`` is the rendered template (plus the item's prompt if the template
        leaves it out, for presets that read their prompt on stdin), or, resuming, the
        rendered ``[agent] resume_prompt``. Raises PromptError, AgentError, GitError.
        """
        item, agent = claim.item, self.w.cfg.agent
        values = prompts.item_values(item, session_id=session_id, attempt=claim.attempt,
                                     worker=self.w.id)
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
            return prompts.render(self.w.cfg.agent.resume_prompt, "[agent] resume_prompt",
                                  {**values, "REASON": resume["reason"]})
        template = prompts.load_template(self.w.template_path)
        rendered = prompts.render(template, str(self.w.template_path), values)
        if presets.reads_stdin(self.w.cfg.agent) and "PROMPT" not in prompts.variables_in(template):
            rendered += "\n\n" + values["PROMPT"]  # stdin is the agent's only prompt
        return rendered

    def _run_agent(self, claim: Claim, att: Attempt, argv: list[str], wt: Path, log_dir: Path,
                   session_id: str, stdin: Path | None) -> None:
        run, agent = self.w.cfg.run, self.w.cfg.agent
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
        tail = stderr_tail(log_dir / "stderr.log")
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
            att.end(*classify_exit(outcome, tail))

    def _verify(self, claim: Claim, att: Attempt, wt: Path, log_dir: Path) -> None:
        verify = self.w.cfg.git.verify
        argv = list(verify) if isinstance(verify, list) else ["/bin/sh", "-c", verify]
        self.w.beat(force=True, doing="verifying")
        try:
            outcome = runner.run(
                argv, cwd=wt, env=runner.clean_env(self._marks(claim)),
                limits=runner.Limits(timeout=self.w.cfg.git.verify_timeout),
                poll=min(0.2, self.w.cfg.run.heartbeat_interval), stdout=log_dir / "verify.log",
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
        return orphans.marks(self.w.ws.root, self.w.id, self.w.generation, claim.id, claim.attempt)

    def _agent_started(self, claim: Claim, proc: psutil.Process) -> None:
        self.w.beat(force=True, doing="running", agent_pid=proc.pid, agent_start=proc.create_time())
        self.w.log("agent-start", item=claim.id, attempt=claim.attempt,
                          agent_pid=proc.pid, agent_start=proc.create_time())

    def _poll(self, claim: Claim, att: Attempt) -> str | None:
        """Between agent reads: refresh the heartbeat; abort if the claim was revoked."""
        m = att.stream.metrics
        self.w.beat(doing=att.stream.activity, last_tool=att.stream.last_tool, turns=m.turns,
                  tokens=m.input_tokens + m.output_tokens + m.cache_creation_tokens
                  + m.cache_read_tokens, cost_usd=round(m.cost_usd, 6),
                  progress_at=time.time())
        if not claim.is_live() or self.w.buried():
            return "fenced"
        if self.w.ws.cancel_requested(claim.id):
            return "cancelled"
        if att.stream.stop_now:
            self.w.beat(force=True, doing=att.stream.activity)  # why it ends, for the operator
            return STOP
        return None


def classify_exit(outcome: runner.ProcessOutcome, stderr_tail: str = "") -> tuple[str, str]:
    if outcome.timed_out:
        return "timed_out", f"killed after {outcome.duration:.1f}s (session_timeout)"
    if outcome.signal:
        return "crashed", f"agent killed by signal {outcome.signal}"
    if outcome.exit_code == 0:
        return "succeeded", "exit 0"
    tail = " ".join(stderr_tail.split())
    return "failed", f"agent exited with status {outcome.exit_code}" + (
        f"; stderr: {tail[-300:]}" if tail else "")


def stderr_tail(path: Path) -> str:
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
