"""Agent presets as argv templates; values are substituted per argument, never via a shell.

The argv for one attempt is built from ``[agent]`` in harness.toml and the
attempt's context (session id, file paths). The claude and codex presets read
their prompt from stdin (:func:`reads_stdin`: the worker hands them the rendered
prompt file), so item text never becomes an argument a CLI could parse as an
option (a Markdown list starts with ``-``) and no prompt is too long for argv
(Linux caps one argument at 128 KiB). docs/agents.md lists each argv.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import sys
import tomllib
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from harness.agents import codex
from harness.config import AgentConfig

TESTED_VERSIONS = Path(__file__).with_name("tested_versions.toml")
_VERSION_RE = re.compile(r"\b(\d+\.\d+\.\d+)\b")
# Defaults for claude that an unattended agent wants (the environment or [agent] env
# may set them otherwise): no update checks, title requests or telemetry.
CLAUDE_ENV = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}


class AgentError(ValueError):
    """The agent cannot be started for this item (e.g. shell preset, no command)."""


def shell_argv(item: Any) -> list[str]:
    """The shell agent's argv: the item's ``command`` list, or a string run by /bin/sh -c."""
    if isinstance(item.command, list) and item.command:
        return list(item.command)
    if isinstance(item.command, str) and item.command.strip():
        return ["/bin/sh", "-c", item.command]
    raise AgentError(f"item {item.id!r} has no command for the shell agent")


def reads_stdin(agent: AgentConfig) -> bool:
    """True if the preset takes its prompt on stdin (the prompt file)."""
    return agent.preset in ("claude", "codex")


def build_argv(agent: AgentConfig, item: Any, ctx: Mapping[str, str]) -> list[str]:
    """The argv for one attempt. ``ctx`` holds the placeholder values (see config.PLACEHOLDERS)
    and, for claude and codex, ``resume_session`` (a session to continue, or "") and, for
    codex, ``git_dir`` / ``git_common_dir`` of the worktree (its sandbox)."""
    if agent.preset == "shell":
        return shell_argv(item)
    if agent.preset == "custom":
        return [arg.format_map(ctx) for arg in agent.command]
    model = ["--model", agent.model] if agent.model else []
    resume = ctx.get("resume_session", "")
    if agent.preset == "sim":
        # By path, not -m: the agent runs in a worktree where the package may not be importable.
        return [sys.executable, str(Path(__file__).with_name("sim.py")), "--item", ctx["item_file"],
                "--session-id", ctx["session_id"], "--prompt-file", ctx["prompt_file"]]
    if agent.preset == "codex":
        sandbox = codex.sandbox_args(ctx["git_dir"], ctx["git_common_dir"])
        head = ["codex", "exec", "resume", resume] if resume else ["codex", "exec"]
        return [*head, "--json", *model, *sandbox, "-"]  # "-": the prompt is stdin
    session = ["--resume", resume] if resume else ["--session-id", ctx["session_id"]]
    argv = ["claude", "-p", "--output-format", "stream-json", "--verbose", *session, *model,
            "--max-turns", str(agent.max_turns)]
    if agent.allowed_tools:
        argv += ["--allowedTools", ",".join(agent.allowed_tools)]
    if agent.max_budget_usd:
        argv += ["--max-budget-usd", f"{agent.max_budget_usd:g}"]
    return argv


def agent_env(agent: AgentConfig) -> dict[str, str]:
    """What the preset adds to the agent's environment (under [agent] env, which wins)."""
    base = {k: v for k, v in CLAUDE_ENV.items() if k not in os.environ} \
        if agent.preset == "claude" else {}
    return {**base, **agent.env}


@cache
def tested_versions() -> dict[str, Any]:
    """tested_versions.toml: {cli: {"package", "tested": [versions]}}."""
    return tomllib.loads(TESTED_VERSIONS.read_text())


def check_tested_version(preset: str, version_text: str) -> tuple[str, str] | None:
    """doctor's verdict on ``<cli> --version`` output: ("PASS"|"WARN", detail), or None
    for a preset without a tested list."""
    known = tested_versions().get(preset)
    if not known:
        return None
    tested = known["tested"]
    match = _VERSION_RE.search(version_text)
    if match is None:
        return "WARN", (f"version unknown ({version_text!r}); tested: {', '.join(tested)}")
    version = match.group(1)
    if version in tested:
        return "PASS", f"{preset} {version} (a tested version)"
    return "WARN", (f"{preset} {version} is not a tested version ({', '.join(tested)}); install"
                    f" one with `npm install -g {known['package']}@{tested[-1]}`")


def program(agent: AgentConfig) -> str | None:
    """The program the preset runs, as looked up on PATH; None when there is nothing to
    look up (sim and shell, or a custom template whose program is a placeholder)."""
    if agent.preset in ("claude", "codex"):
        return agent.preset
    if agent.preset == "custom" and agent.command and "{" not in agent.command[0]:
        return agent.command[0]
    return None


def find_program(agent: AgentConfig, path: str | None = None) -> str | None:
    """Where :func:`program` resolves, searching ``path`` (default: the PATH the agent
    gets, [agent] env included) as exec does; None if absent or not executable."""
    from harness.agents.runner import clean_env

    name = program(agent)
    if name is None:
        return None
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=path if path is not None else clean_env(agent.env).get("PATH"))


def resource_limiter(agent: AgentConfig) -> Callable[[], None] | None:
    """A preexec function applying [agent] memory_mb / cpu_seconds / open_files, or None."""
    limits = []
    if agent.memory_mb:
        limits.append((resource.RLIMIT_AS, agent.memory_mb * 2**20))
    if agent.cpu_seconds:
        limits.append((resource.RLIMIT_CPU, agent.cpu_seconds))
    if agent.open_files:
        limits.append((resource.RLIMIT_NOFILE, agent.open_files))
    if not limits:
        return None

    def apply() -> None:
        for which, value in limits:
            resource.setrlimit(which, (value, value))

    return apply
