"""doctor's checks of the agent: its binary and version, its environment, its login, and
(``--check-auth``) one real, cheap request through it.

Each check returns (PASS|WARN|FAIL, name, detail); a detail that is not PASS says what
to fix. Credentials are named, never shown.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from typing import Any

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
AGENT_VERSION_TIMEOUT = 15.0
LOGIN_TIMEOUT = 30.0
AUTH_TIMEOUT = 90.0  # one request with the CLI's retries turned off
AUTH_PROMPT = "Reply with the single word OK.\n"
# How to get what a check finds missing (the agents' npm packages are their vendors' names).
INSTALL = {"claude": "npm install -g @anthropic-ai/claude-code",
           "codex": "npm install -g @openai/codex",
           "git": "apt-get install git (Debian, Ubuntu) or brew install git (macOS)"}
# What gives claude a login (docs/agents.md); their presence is reported, not their values.
CLAUDE_LOGINS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
                 "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")


def agent_env(cfg: Any) -> dict[str, str]:
    """The environment the agent gets ([agent] env and the preset's defaults included)."""
    from harness.agents import presets
    from harness.agents.runner import clean_env

    return clean_env(presets.agent_env(cfg.agent))


def _run(argv: list[str], env: dict[str, str], timeout: float, stdin: str = "",
         cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env,
                          timeout=timeout, input=stdin, cwd=cwd, start_new_session=True)


def check_agent(cfg: Any) -> tuple[str, str, str]:
    """The preset's program is on the agent's PATH and answers ``--version`` (a tested
    version for claude and codex)."""
    import sys

    from harness.agents import presets

    preset = cfg.agent.preset
    if preset == "sim":
        return PASS, "agent", f"preset sim: the simulated agent runs with {sys.executable}"
    if preset == "shell":
        return PASS, "agent", "preset shell: each item's own command runs, no agent binary"
    if preset == "custom" and not cfg.agent.command:
        return FAIL, "agent", "preset custom needs [agent] command (an argv template)"
    name = presets.program(cfg.agent)
    if name is None:
        return PASS, "agent", (f"preset custom: program {cfg.agent.command[0]!r} is a"
                               " placeholder, not checked")
    path = presets.find_program(cfg.agent)
    if path is None:  # run refuses to start (exit 2)
        how = INSTALL.get(preset)
        return FAIL, "agent", (f"preset {preset}: `{name}` not on PATH or not executable"
                               + (f"; install it with `{how}`" if how else ""))
    if preset == "custom":
        return PASS, "agent", f"preset custom: {path} (not run)"
    try:
        proc = _run([path, "--version"], agent_env(cfg), AGENT_VERSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        return FAIL, "agent", f"`{path} --version` did not answer in {AGENT_VERSION_TIMEOUT:g}s"
    except OSError as exc:
        return FAIL, "agent", f"`{path} --version`: {exc}"
    first = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[:1]
    if proc.returncode != 0:
        return FAIL, "agent", (f"`{path} --version` exited {proc.returncode}:"
                               f" {first[0] if first else 'no output'}")
    version = first[0] if first else ""
    verdict = presets.check_tested_version(preset, version)
    if verdict is not None:
        return verdict[0], "agent", f"{path}: {verdict[1]}"
    return PASS, "agent", f"{path}: {version or 'version unknown'}"


def check_env(cfg: Any) -> tuple[str, str, str]:
    """Markers of a parent agent session are removed from the agent's environment;
    logins and provider settings are kept."""
    import os

    from harness.agents.runner import is_nested_marker

    markers = sorted(k for k in os.environ if is_nested_marker(k) and not k.startswith(
        "HARNESS_"))
    left = sorted(set(markers) & set(agent_env(cfg)))
    if left:
        return FAIL, "agent-env", f"would reach the agent despite clean_env: {', '.join(left)}"
    kept = [k for k in CLAUDE_LOGINS if k in agent_env(cfg)] if cfg.agent.preset == "claude" \
        else []
    said = f"; logins kept: {', '.join(kept)}" if kept else ""
    if not markers:
        return PASS, "agent-env", f"no nested-session variables set{said}"
    return PASS, "agent-env", f"stripped from the agent's environment: {', '.join(markers)}{said}"


def check_login(cfg: Any) -> list[tuple[str, str, str]]:
    """claude: ``claude auth status`` says logged in; codex: its provider is configured
    and its key variable set (or, for OpenAI itself, ``codex login status``). No request
    is sent. Nothing for other presets or a missing binary (check_agent says so)."""
    from harness.agents import presets

    path = presets.find_program(cfg.agent) if cfg.agent.preset in ("claude", "codex") else None
    if path is None:
        return []
    env = agent_env(cfg)
    try:
        if cfg.agent.preset == "claude":
            return [_claude_login(path, env)]
        return [_codex_login(path, env)]
    except subprocess.TimeoutExpired:
        return [(FAIL, "agent-login", f"`{path}` did not answer in {LOGIN_TIMEOUT:g}s")]
    except OSError as exc:
        return [(FAIL, "agent-login", f"{path}: {exc}")]


def _claude_login(path: str, env: dict[str, str]) -> tuple[str, str, str]:
    from harness.agents.claude import FIXES

    proc = _run([path, "auth", "status"], env, LOGIN_TIMEOUT)
    try:
        status = json.loads(proc.stdout)
    except ValueError:
        status = {}
    if status.get("loggedIn") is True:
        how = status.get("authMethod") or "?"
        provider = status.get("apiProvider") or "firstParty"
        return PASS, "agent-login", (f"claude is logged in ({how}, {provider}; not checked"
                                     " against the API: `doctor --check-auth` does)")
    return FAIL, "agent-login", f"claude is not logged in: {FIXES['auth_failed']}"


def _codex_login(path: str, env: dict[str, str]) -> tuple[str, str, str]:
    from harness.agents import codex

    try:
        prov = codex.provider(env)
    except ValueError as exc:
        return FAIL, "agent-login", f"codex config: {exc}"
    if prov["custom"]:
        missing = [k for k in ("base_url", "env_key") if not prov.get(k)]
        if missing:
            return FAIL, "agent-login", (f"{prov['config']}: [model_providers.{prov['id']}]"
                                         f" has no {' or '.join(missing)}")
        if not env.get(prov["env_key"]):
            return FAIL, "agent-login", (f"provider {prov['id']} ({prov['config']}) reads its key"
                                         f" from {prov['env_key']}, which the agent's"
                                         " environment does not set: set it there or in"
                                         " [agent] env")
        return PASS, "agent-login", (f"provider {prov['id']} at {prov['base_url']}, key in"
                                     f" {prov['env_key']} (set)")
    proc = _run([path, "login", "status"], env, LOGIN_TIMEOUT)
    if proc.returncode == 0:
        return PASS, "agent-login", f"codex is logged in to {prov['id']} ({prov['config']})"
    return FAIL, "agent-login", (f"codex is not logged in to {prov['id']} and {prov['config']}"
                                 " names no other provider (codex would wait for the network"
                                 " forever): run `printenv OPENAI_API_KEY | codex login"
                                 " --with-api-key` with the agent's CODEX_HOME, or configure"
                                 " a model_provider with an env_key")


def check_auth(cfg: Any) -> list[tuple[str, str, str]]:
    """One real request through the agent CLI, its own retries off: does the API take
    this login? Costs one tiny request. Nothing for other presets."""
    from harness.agents import presets

    path = presets.find_program(cfg.agent) if cfg.agent.preset in ("claude", "codex") else None
    if path is None:
        return []
    env = agent_env(cfg)
    with tempfile.TemporaryDirectory(prefix="harness-auth-") as scratch:
        try:
            if cfg.agent.preset == "claude":
                return [_claude_auth(path, {**env, "CLAUDE_CODE_MAX_RETRIES": "0"}, scratch)]
            return [_codex_auth(path, env, scratch)]
        except subprocess.TimeoutExpired:
            return [(FAIL, "agent-auth", f"no answer from the API through {path} in"
                                         f" {AUTH_TIMEOUT:g}s (is the endpoint reachable?)")]
        except OSError as exc:
            return [(FAIL, "agent-auth", f"{path}: {exc}")]


def _claude_auth(path: str, env: dict[str, str], cwd: str) -> tuple[str, str, str]:
    from harness.agents.claude import FIXES

    proc = _run([path, "-p", "--max-turns", "1"], env, AUTH_TIMEOUT, AUTH_PROMPT, cwd)
    said = " ".join((proc.stdout.strip() or proc.stderr.strip()).split())[:200]
    if proc.returncode == 0:
        return PASS, "agent-auth", f"the API answered claude: {said!r}"
    return FAIL, "agent-auth", f"claude exited {proc.returncode}: {said}; {FIXES['auth_failed']}"


def _codex_auth(path: str, env: dict[str, str], cwd: str) -> tuple[str, str, str]:
    from harness.agents import codex
    from harness.agents.codex import FIXES

    prov = codex.provider(env)
    fast = [f"model_providers.{prov['id']}.request_max_retries=0",
            f"model_providers.{prov['id']}.stream_max_retries=0"] if prov["custom"] else []
    argv = [path, "exec", "--json", "--skip-git-repo-check", "-s", "read-only",
            *(a for opt in fast for a in ("-c", opt)), "-"]
    proc = _run(argv, env, AUTH_TIMEOUT, AUTH_PROMPT, cwd)
    stream = codex.CodexStream()
    for line in proc.stdout.splitlines():
        stream.feed(line)
    if stream.result is not None and not stream.result_is_error:
        return PASS, "agent-auth", f"the API answered codex (provider {prov['id']})"
    said = stream.result_text() or " ".join(proc.stderr.split())[-200:] or f"exit {proc.returncode}"
    return FAIL, "agent-auth", f"codex: {said}; {FIXES['auth_failed']}"
