"""Agent presets as argv templates; values are substituted per argument, never via a shell.

The argv for one attempt is built from ``[agent]`` in harness.toml and the
attempt's context (prompt text, session id, file paths). Item text only ever
becomes a single argv element (``-p <prompt>``), so nothing in an item can
inject shell syntax.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.config import AgentConfig


class AgentError(ValueError):
    """The agent cannot be started for this item (e.g. shell preset, no command)."""


def shell_argv(item: Any) -> list[str]:
    """The shell agent's argv: the item's ``command`` list, or a string run by /bin/sh -c."""
    if isinstance(item.command, list) and item.command:
        return list(item.command)
    if isinstance(item.command, str) and item.command.strip():
        return ["/bin/sh", "-c", item.command]
    raise AgentError(f"item {item.id!r} has no command for the shell agent")


def build_argv(agent: AgentConfig, item: Any, ctx: Mapping[str, str]) -> list[str]:
    """The argv for one attempt. ``ctx`` holds the placeholder values (see config.PLACEHOLDERS)."""
    if agent.preset == "shell":
        return shell_argv(item)
    if agent.preset == "custom":
        return [arg.format_map(ctx) for arg in agent.command]
    model = ["--model", agent.model] if agent.model else []
    if agent.preset == "sim":
        # By path, not -m: the agent runs in a worktree where the package may not be importable.
        return [sys.executable, str(Path(__file__).with_name("sim.py")), "--item", ctx["item_file"],
                "--session-id", ctx["session_id"], "--prompt-file", ctx["prompt_file"]]
    if agent.preset == "codex":
        return ["codex", "exec", "--json", *model, ctx["prompt"]]
    argv = ["claude", "-p", ctx["prompt"], "--output-format", "stream-json", "--verbose",
            "--session-id", ctx["session_id"],
            "--append-system-prompt-file", ctx["system_prompt_file"], *model,
            "--max-turns", str(agent.max_turns)]
    if agent.allowed_tools:
        argv += ["--allowedTools", ",".join(agent.allowed_tools)]
    if agent.max_budget_usd:
        argv += ["--max-budget-usd", f"{agent.max_budget_usd:g}"]
    return argv


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
