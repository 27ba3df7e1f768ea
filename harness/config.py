"""``harness.toml``: configuration, validated, with env and CLI overrides.

Precedence, lowest first: defaults, the file, environment variables named
``HARNESS_<SECTION>_<KEY>`` (e.g. ``HARNESS_RUN_AGENTS=4``), CLI flags.
Unknown keys and bad values raise ConfigError naming the file and the key;
the CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
import string
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator


class ConfigError(Exception):
    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {reason}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    agents: int = Field(3, ge=0, le=256, description="number of worker processes")
    tick: float = Field(0.25, gt=0, le=60, description="coordinator loop period, seconds")
    heartbeat_interval: float = Field(0.5, gt=0, le=60, description="worker heartbeat period, seconds")
    stale_after: float = Field(30.0, gt=0, description="heartbeat counter unchanged this long = stale")
    stale_kill_grace: float = Field(30.0, ge=0, description="a stale worker sent TERM is KILLed after this")
    orphan_grace: float = Field(5.0, ge=0, description="a claim no live worker names is revoked after this")
    start_timeout: float = Field(20.0, gt=0, description="a new worker must heartbeat within this")
    shutdown_grace: float = Field(10.0, ge=0, description="on SIGINT/SIGTERM, running items get this long")
    coordinator_gone_after: float = Field(60.0, gt=0, description="workers stop claiming after the coordinator is gone this long")
    session_timeout: float = Field(3600.0, gt=0, description="an attempt is killed after this long (timed_out)")
    stall_after: float = Field(360.0, gt=0, description="a streaming agent silent this long is killed (stalled); above the CLIs' own 300 s stream timeout, so their retry comes first")
    result_grace: float = Field(10.0, ge=0, description="an agent that reported its result is killed if still running after this")
    max_attempts: int = Field(3, ge=1, le=100, description="attempts per item before it is dead-lettered")
    backoff_base: float = Field(5.0, ge=0, description="retry delay after attempt 1; doubles each attempt")
    backoff_max: float = Field(300.0, ge=0, description="cap on the retry delay")
    max_consecutive_failures: int = Field(5, ge=0, description="circuit breaker: pause after this many failed attempts in a row; 0 disables")
    budget_tokens: int = Field(0, ge=0, description="run budget in tokens (input+output+cache); 0 = none")
    budget_usd: float = Field(0.0, ge=0, description="run budget in dollars; 0 = none")
    memory_floor_mb: int = Field(512, ge=0, description="no new workers while free memory is below this")
    restart_backoff_max: float = Field(30.0, ge=0, description="cap on the delay before restarting a worker that keeps dying")
    log_cap_mb: int = Field(50, ge=1, description="cap per attempt on events.jsonl and on stderr.log")
    durable: bool = Field(False, description="fsync files and directories on every queue transition")
    multi_host: bool = Field(False, description="several hosts run on this workspace (a shared NFSv4.1+ directory): per-host names, leases, event logs; see docs/multi-host.md")
    host_stale_after: float = Field(300.0, gt=0, description="multi_host: a host whose lease counter has not moved this long is dead and its claims are taken back (keep it above 2 x the NFS lease + acdirmax)")
    trust_filesystem: bool = Field(False, description="multi_host: run on a network filesystem the harness does not know to be safe (it refuses otherwise)")
    shared_queue: bool = Field(False, description="queue/ group-readable and -writable (dirs 2770, files 0660) for a team sharing it; logs and state stay private (0700/0600)")
    fault_pause_after: float = Field(5.0, ge=0, description="writes failing this long (disk full, read-only) pause the pool until they succeed")


class GitConfig(_Section):
    repo: str = Field(".", description="repository the worktrees are made from (relative to the workspace)")
    target_branch: str = Field("main", description="every attempt starts from this branch; merges go here")
    verify: str | list[str] = Field("", description="command run in the worktree after the agent; failure = verify_failed")
    verify_timeout: float = Field(900.0, gt=0, description="seconds before verify is killed")
    reuse: bool = Field(True, description="an item that changes no file runs no git process: git's last clean status stands while nothing in the worktree changed (docs/operations.md, What git runs for each item); false: status, checkout and update-ref processes every item")
    integrate: Literal["none", "merge", "push", "merge-push", "pr"] = Field("none", description="none: results stay on harness/<id>; merge: into target_branch here; push: harness/<id> to the remote; merge-push: merged into the remote's target_branch; pr: pushed, then pr_command")
    remote: str = Field("", description="git remote (a name such as origin, or a URL) for push, merge-push and pr; also the base every attempt starts from")
    push_prefix: str = Field("harness/", description="a done item's branch on the remote is this prefix + its id")
    pr_command: list[str] = Field(default_factory=list, description="integrate = pr: argv run after the push; {{BRANCH}} {{TITLE}} {{ID}} {{SUMMARY}} are filled in; the last URL it prints is recorded")
    fetch_interval: float = Field(30.0, ge=0, description="with a remote: attempts start from its target fetched at most this many seconds ago")
    push_retries: int = Field(5, ge=0, le=100, description="merge-push: merge onto a moved remote target again this many times, with jittered backoff")
    remote_wait: float = Field(300.0, ge=0, description="a batch run waits this long for an unreachable remote, then ends (exit 1) leaving the items in done/ to deliver next run")


PLACEHOLDERS = frozenset({"prompt", "session_id", "system_prompt_file", "prompt_file",
                          "item_file", "model", "worktree", "attempt", "item_id", "python"})
Preset = Literal["claude", "codex", "shell", "sim", "custom"]
DEFAULT_RESUME_PROMPT = ("Your previous session on work item {{WORK_ITEM}} was interrupted"
                         " ({{REASON}}); this is attempt {{ITERATION}}. Continue where you left"
                         " off: your earlier changes are in this worktree. Finish the work"
                         " item and commit.")


class AgentConfig(_Section):
    preset: Preset = Field("shell", description="claude, codex, shell, sim or custom")
    command: list[str] = Field(default_factory=list, description="argv template for preset=custom")
    output: Literal["stream-json", "codex-json", "text"] | None = Field(None, description="agent stdout format: stream-json (Claude Code's), codex-json (codex exec --json) or text; default by preset")
    model: str = Field("", description="model name passed to the agent (empty = agent default)")
    allowed_tools: list[str] = Field(default_factory=lambda: ["Bash", "Read", "Edit", "Write", "Glob", "Grep"])
    max_turns: int = Field(50, ge=1, description="per attempt, passed to the agent")
    max_budget_usd: float = Field(0.0, ge=0, description="per attempt, passed to the agent; 0 = none")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the agent")
    memory_mb: int = Field(0, ge=0, description="address-space limit for the agent (RLIMIT_AS); 0 = none")
    cpu_seconds: int = Field(0, ge=0, description="CPU time limit for the agent (RLIMIT_CPU); 0 = none")
    open_files: int = Field(0, ge=0, description="open file limit for the agent (RLIMIT_NOFILE); 0 = inherit")
    tool_timeout: float = Field(600.0, gt=0, description="silence allowed beyond stall_after while a tool call that names no timeout runs, seconds")
    resume: bool = Field(False, description="a retry after overloaded, stalled or rate_limited continues the same session (claude, codex)")
    resume_prompt: str = Field(DEFAULT_RESUME_PROMPT, description="what a resumed session is told ({{REASON}} and the prompt variables)")
    transient_retries: int = Field(10, ge=0, description="free retries per item after overloaded before they count as attempts")

    @field_validator("command")
    @classmethod
    def _check_placeholders(cls, argv: list[str]) -> list[str]:
        for arg in argv:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
            except ValueError as exc:
                raise ValueError(f"bad argument {arg!r}: {exc}") from None
            unknown = fields - PLACEHOLDERS
            if unknown:
                raise ValueError(f"unknown placeholder(s) {sorted(unknown)} in {arg!r};"
                                 f" known: {sorted(PLACEHOLDERS)}")
        return argv

    @field_validator("output")
    @classmethod
    def _check_output(cls, output: str | None, info: Any) -> str | None:
        preset = info.data.get("preset")
        wrong = {"codex": "stream-json", "claude": "codex-json", "sim": "codex-json"}
        if output is not None and wrong.get(preset) == output:
            raise ValueError(f"preset {preset} does not print {output}; leave output unset"
                             f" (the preset's own format) or use \"text\"")
        return output

    @property
    def stream_format(self) -> str | None:
        """The parsed format of the agent's stdout, or None for text (not parsed).

        By default claude and sim print stream-json and codex codex-json; a custom
        agent's format is unknown (text) unless ``output`` names it.
        """
        if self.output is not None:
            return None if self.output == "text" else self.output
        return {"claude": "stream-json", "sim": "stream-json", "codex": "codex-json"}.get(
            self.preset)

    @property
    def streams(self) -> bool:
        return self.stream_format is not None


class PathsConfig(_Section):
    bootstrap: str = Field("prompts/bootstrap.md", description="prompt template (relative to the workspace)")


class RetentionConfig(_Section):
    days: float = Field(30.0, ge=0, description="`gc` prunes the logs and branches of items that ended longer ago than this (days)")
    include_failed: bool = Field(False, description="`gc` prunes failed items too (their logs and attempt branches are the evidence of why)")


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    git: GitConfig = Field(default_factory=GitConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def error(self, key: str, reason: str) -> ConfigError:
        """A ConfigError for ``key`` ("section.key") naming where its value came from."""
        return ConfigError(self._origins.get(key, self._origins.get("", "defaults")), key, reason)


def load(path: Path, overrides: dict[str, dict[str, Any]] | None = None,
         environ: dict[str, str] | None = None) -> Config:
    """Load ``path`` (absent = defaults), apply env then ``overrides`` ({section: {key: value}})."""
    data: dict[str, Any] = {}
    source = str(path)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    env = os.environ if environ is None else environ
    origin: dict[str, str] = {}
    for section, fields in Config.model_fields.items():
        sub = fields.annotation.model_fields  # type: ignore[union-attr]
        for key in sub:
            value: Any = env.get(f"HARNESS_{section}_{key}".upper())
            if value is None:
                continue
            if sub[key].annotation == list[str]:
                value = [v.strip() for v in value.split(",") if v.strip()]
            data.setdefault(section, {})[key] = value
            origin[f"{section}.{key}"] = "environment variable " + f"HARNESS_{section}_{key}".upper()
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                data.setdefault(section, {})[key] = value
                origin[f"{section}.{key}"] = "command line"
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"] if err["type"] != "extra_forbidden" else "unknown key"
        raise ConfigError(origin.get(key, source), key, msg) from None
    cfg._origins = {"": source, **origin}
    return cfg


def effective(cfg: Config, path: Path) -> list[dict[str, Any]]:
    """Each setting as {key, value, origin}: "flag", "env" (naming the variable), "file"
    (naming the file) or "default". A flag or variable given but equal to the file's value
    still names itself: it is what decided."""
    in_file: dict[str, Any] = {}
    if path.exists():
        try:
            in_file = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            in_file = {}
    rows = []
    for name, model in sections():
        values = getattr(cfg, name)
        for key in model.model_fields:
            dotted = f"{name}.{key}"
            told = cfg._origins.get(dotted, "")
            if told == "command line":
                origin = "flag"
            elif told.startswith("environment variable "):
                origin = "env " + told.removeprefix("environment variable ")
            elif key in (in_file.get(name) or {}):
                origin = f"file {path}"
            else:
                origin = "default"
            rows.append({"key": dotted, "value": getattr(values, key), "origin": origin})
    return rows


def queue_options(cfg: Config) -> dict[str, Any]:
    """The Queue keyword arguments [run] sets (one place, for coordinator, worker and CLI)."""
    run = cfg.run
    return {"durable": run.durable, "max_attempts": run.max_attempts, "shared": run.shared_queue,
            "backoff_base": run.backoff_base, "backoff_max": run.backoff_max}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def sections() -> list[tuple[str, type[BaseModel]]]:
    return [(name, f.annotation) for name, f in Config.model_fields.items()]  # type: ignore[misc]


def render_toml(preset: str = "shell", target_branch: str | None = None) -> str:
    """A complete, commented harness.toml with every key at its default (for ``init``),
    but for the agent preset and, when given, the repository's branch."""
    git = {"target_branch": target_branch} if target_branch else {}
    cfg = Config.model_validate({"agent": {"preset": preset}, "git": git})
    lines = ["# parallel-harness configuration. Every key is optional; shown at its default.",
             "# Environment variables HARNESS_<SECTION>_<KEY> and command-line flags override it.",
             "# Reference: docs/configuration.md", ""]
    for name, model in sections():
        lines.append(f"[{name}]")
        values = getattr(cfg, name)
        for key, info in model.model_fields.items():
            if info.description:
                lines.append(f"# {info.description}")
            value = getattr(values, key)
            lines.append(f"# {key} = (default by preset)" if value is None
                         else f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def reference_markdown() -> str:
    """The table of every key for docs/configuration.md."""
    out = []
    for name, model in sections():
        out += [f"### [{name}]", "", "| key | default | env var | meaning |", "|---|---|---|---|"]
        defaults = model()
        for key, info in model.model_fields.items():
            value = getattr(defaults, key)
            shown = "(by preset)" if value is None else _toml_value(value)
            env = "—" if isinstance(value, dict) else f"`HARNESS_{name.upper()}_{key.upper()}`"
            out.append(f"| `{key}` | `{shown}` | {env} | {info.description or ''} |")
        out.append("")
    return "\n".join(out)
