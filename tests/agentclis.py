"""The real agent CLIs for tests: where they are installed, and a workspace that runs them
against the project's fake model API (tests/fakeapi/).

The CLIs are looked up as ``<root>/<cli>-<version>/node_modules/.bin/<cli>`` (how
.ci/run and docs/agents.md install them, one npm prefix per version), ``<root>`` being
``$HARNESS_AGENT_CLIS``, else ``.agent-clis/`` in the repository, else /opt/agent-clis.
A test that needs a missing CLI is skipped with the reason, unless
``HARNESS_REQUIRE_AGENT_CLIS=1`` (set by .ci/run), which turns the skip into a failure.

:class:`AgentRun` starts ``parallel-harness run`` with an environment stripped of the
caller's credentials (only the fake's key reaches the agent), records what every worker
heartbeat said while it ran, and kills what it started by process group at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.agents.prompts import DEFAULT_BOOTSTRAP
from harness.cli.demo import make_repo
from harness.workspace import Workspace
from tests.wsutil import heartbeat_of, kill_all

REPO = Path(__file__).resolve().parent.parent
VERSIONS = tomllib.loads((REPO / "harness" / "agents" / "tested_versions.toml").read_text())
REQUIRE = os.environ.get("HARNESS_REQUIRE_AGENT_CLIS") == "1"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Variables of the caller that must not reach an agent under test (its real logins).
_CALLER_VARS = ("ANTHROPIC_", "CLAUDE", "OPENAI_", "CODEX_", "AWS_", "GOOGLE_", "HARNESS_")


def roots() -> list[Path]:
    env = os.environ.get("HARNESS_AGENT_CLIS")
    return [Path(env)] if env else [REPO / ".agent-clis", Path("/opt/agent-clis")]


def version(cli: str) -> str:
    """The version under test: ``$HARNESS_AGENT_<CLI>_VERSION`` (bench/agent_versions.py
    sets it), else the last tested one."""
    return os.environ.get(f"HARNESS_AGENT_{cli.upper()}_VERSION") or VERSIONS[cli]["tested"][-1]


def find(cli: str, version_: str | None = None) -> Path | None:
    version_ = version_ or version(cli)
    for root in roots():
        path = root / f"{cli}-{version_}" / "node_modules" / ".bin" / cli
        if os.access(path, os.X_OK):
            return path
    return None


def need(cli: str) -> Path:
    """The CLI's binary; skip (or, under .ci/run, fail) the test when it is missing."""
    wanted = version(cli)
    path = find(cli, wanted)
    if path is None:
        where = " or ".join(str(r / f"{cli}-{wanted}") for r in roots())
        why = (f"{cli} {wanted} is not installed (looked in {where}); install it with"
               f" `npm install --prefix .agent-clis/{cli}-{wanted}"
               f" {VERSIONS[cli]['package']}@{wanted}`")
        if REQUIRE:
            pytest.fail(f"HARNESS_REQUIRE_AGENT_CLIS=1: {why}")
        pytest.skip(why)
    return path


RUN_TOML = """\
[run]
tick = 0.05
heartbeat_interval = 0.1
stale_after = 30
orphan_grace = 1.0
start_timeout = 20
shutdown_grace = 3
backoff_base = {backoff}
backoff_max = {backoff}
max_attempts = {max_attempts}
max_consecutive_failures = {breaker}
memory_floor_mb = 0
session_timeout = {session_timeout}
stall_after = {stall_after}
result_grace = 5
"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def claude_env(binary: Path, api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """[agent] env for claude against the fake: its own HOME, the fake's URL and key
    (``extra`` adds variables; one given as "" is left out)."""
    env = {"PATH": f"{binary.parent}:{BASE_PATH}", "HOME": str(home),
           "ANTHROPIC_BASE_URL": api_url, "ANTHROPIC_API_KEY": "test-key", **extra}
    return {k: v for k, v in env.items() if v != ""}


def codex_env(binary: Path, api_url: str, home: Path, provider: dict[str, Any] | None = None,
              **extra: str) -> dict[str, str]:
    """[agent] env for codex: a CODEX_HOME whose provider is the fake (fast give-up options
    unless ``provider`` says otherwise), its key in FAKE_API_KEY."""
    codex_home = home / "codex-home"
    codex_home.mkdir(parents=True, exist_ok=True)
    options = {"request_max_retries": 0, "stream_max_retries": 1,
               "stream_idle_timeout_ms": 4000, **(provider or {})}
    lines = ['model = "gpt-5.5"', 'model_provider = "fake"', "", "[model_providers.fake]",
             'name = "Fake API"', f'base_url = "{api_url}/v1"', 'env_key = "FAKE_API_KEY"',
             'wire_api = "responses"', *(f"{k} = {toml_value(v)}" for k, v in options.items())]
    (codex_home / "config.toml").write_text("\n".join(lines) + "\n")
    return {"PATH": f"{binary.parent}:{BASE_PATH}", "HOME": str(home),
            "CODEX_HOME": str(codex_home), "FAKE_API_KEY": "test-key", **extra}


def make_agent_workspace(root: Path, preset: str, env: dict[str, str], *, max_attempts: int = 1,
                         stall_after: float = 20.0, session_timeout: float = 90.0,
                         backoff: float = 0.05, breaker: int = 0, template: str | None = None,
                         **agent: Any) -> Workspace:
    """A git repo (with a committer identity for the agent) and a harness.toml running
    ``preset`` with ``env``; ``agent`` adds [agent] keys."""
    make_repo(root)
    for key, value in (("user.name", "Agent Under Test"), ("user.email", "agent@example.invalid")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)
    keys = {"preset": preset, "max_turns": 10, "env": env, **agent}
    (root / "harness.toml").write_text(
        RUN_TOML.format(max_attempts=max_attempts, stall_after=stall_after, backoff=backoff,
                        session_timeout=session_timeout, breaker=breaker)
        + "\n[agent]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()))
    (root / "prompts" / "bootstrap.md").write_text(template or DEFAULT_BOOTSTRAP)
    ws = Workspace.at(root)
    ws.make_dirs()
    return ws


def caller_env() -> dict[str, str]:
    """The test process's environment without anyone's agent logins or harness settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_CALLER_VARS)}


class AgentRun:
    """``parallel-harness run`` in a workspace, watched: every distinct ``doing`` of the
    workers' heartbeats is kept in ``activities``. Use as a context manager; on exit
    the coordinator and every recorded worker and agent process group is killed."""

    def __init__(self, ws: Workspace, *args: str, agents: int = 1) -> None:
        self.ws, self.args, self.agents = ws, args, agents
        self.activities: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> AgentRun:
        log = open(self.ws.root / "coordinator.out", "ab")
        with log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.cli", "--root", str(self.ws.root), "run",
                 "--agents", str(self.agents), *self.args], stdout=log, stderr=log, env=caller_env(),
                start_new_session=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            hb = heartbeat_of(self.ws, "w1") or {}
            doing = hb.get("doing")
            if isinstance(doing, str) and doing not in self.activities:
                self.activities.append(doing)
            time.sleep(0.01)

    def wait(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run did not end within {timeout}s:\n{self.output()}") from None

    def interrupt(self, timeout: float = 60.0) -> int:
        """SIGINT the run (as Ctrl-C would) and wait for it to end."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def output(self) -> str:
        return (self.ws.root / "coordinator.out").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watcher.join()
        kill_all(self.ws, self.proc)


def processes_in(root: Path) -> list[str]:
    """Processes of this user still running with their working directory under ``root``."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline", "uids", "status"]):
        try:
            cwd = proc.info["cwd"] or ""
            if proc.info["status"] != psutil.STATUS_ZOMBIE and cwd.startswith(str(root)) \
                    and proc.info["uids"].real == os.getuid():
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.Error, TypeError, AttributeError):
            continue
    return found
