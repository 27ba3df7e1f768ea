"""Drive the real agent CLIs against the fake API and record what they emit.

Not a test (it needs the CLIs installed, see harness/agents/tested_versions.toml);
a script to re-learn the CLIs when a version changes::

    python -m tests.fakeapi.try_clis --claude 2.1.332 --codex 0.171.0 \\
        --save tests/data/cli-events --summary /tmp/try_clis.json

For each CLI version it makes one work folder (a git repo with a linked
worktree, a HOME, a CODEX_HOME), runs every scenario there with the prompt on
stdin and a clean environment (``env -i`` style: PATH, HOME and only the
variables the scenario names, so no credentials of the caller leak in), and
prints one line per scenario: exit code, seconds, last events. ``--save``
writes each stdout, with the work folder and port scrubbed, to
``<save>/<cli>-<version>/<scenario>.jsonl``.

Processes are started in their own session and, on timeout, ended by their
recorded process group id (TERM, then KILL).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .server import FakeModelAPI

CLIS_ROOT = Path(os.environ.get("AGENT_CLIS_ROOT", "/opt/agent-clis"))
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
CODEX_MODEL = "gpt-5.5"  # a slug codex 0.171 has metadata for (an unknown one adds an error item)

# Environment that makes Claude give up fast on a broken endpoint: one retry, 8 s to get
# response headers, 10 s (the minimum) of silence in a started stream (2.1.332; 2.1.197
# ignores the byte watchdog and waits 300 s).
CLAUDE_FAST = {
    "CLAUDE_CODE_MAX_RETRIES": "1",
    "API_TIMEOUT_MS": "8000",
    "CLAUDE_ENABLE_BYTE_WATCHDOG": "1",
    "CLAUDE_BYTE_STREAM_IDLE_TIMEOUT_MS": "10000",
}
# Codex provider options (config.toml [model_providers.fake]) that give up fast.
CODEX_FAST = {
    "request_max_retries": "0",
    "stream_max_retries": "1",
    "stream_idle_timeout_ms": "4000",
}


@dataclass
class Scenario:
    """One CLI run. ``args`` may hold ``{session}``, ``{gitdir}``, ``{common}``, ``{sysfile}``."""

    name: str
    prompt: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset a default variable
    provider: dict[str, str] = field(default_factory=dict)  # codex provider overrides
    timeout: float = 120.0
    expect_commit: bool = False
    in_worktree: bool | None = None  # run in the linked worktree (default: codex yes, claude no)
    sub: list[str] = field(
        default_factory=list
    )  # codex: ["exec"] or ["exec", "resume", "{thread}"]


@dataclass
class Outcome:
    """What one run did; ``events`` counts ``type[/subtype|item type]`` of stdout lines."""

    cli: str
    version: str
    scenario: str
    argv: list[str]
    rc: int | None
    seconds: float
    timed_out: bool
    committed: bool
    events: dict[str, int]
    last_events: list[str]
    result: dict[str, Any] | None
    requests: dict[str, int]
    stderr_tail: str


def claude_scenarios() -> list[Scenario]:
    tools = ["--allowedTools", "Bash,Read,Edit,Write"]
    base = ["-p", "--output-format", "stream-json", "--verbose", "--max-turns", "10", *tools]
    return [
        Scenario("text", "Say hello. [[fake:text]]", base),
        Scenario(
            "write_commit",
            "Write a file and commit it. [[fake:write_commit]]",
            [*base, "--session-id", "{session}"],
            expect_commit=True,
        ),
        Scenario(
            "resume",
            'Show the last commit. [[fake:bash cmd="git log --oneline -1"]]',
            [*base, "--resume", "{session}"],
        ),
        Scenario(
            "resume_other_cwd",
            '[[fake:bash cmd="pwd"]]',
            [*base, "--resume", "{session}"],
            in_worktree=True,
        ),
        Scenario("session_id_in_use", "[[fake:text]]", [*base, "--session-id", "{session}"]),
        Scenario(
            "dash_prompt", '- a prompt that starts with a dash [[fake:text text="dash ok"]]', base
        ),
        Scenario("version_prompt", "--version", base),
        Scenario(
            "append_system_prompt_file",
            "No marker in this prompt.",
            [*base, "--append-system-prompt-file", "{sysfile}"],
        ),
        Scenario("bash", '[[fake:bash cmd="echo hello from bash"]]', base),
        Scenario("max_turns", "[[fake:max_turns]]", [*base[:4], "--max-turns", "3", *tools]),
        Scenario("max_budget", "[[fake:max_turns]]", [*base, "--max-budget-usd", "0.05"]),
        Scenario("rate_429", "[[fake:rate_429 retries=2 after=1]]", base),
        Scenario("overload_529", "[[fake:overload_529]]", base),
        Scenario("overload_529_twice", "[[fake:overload_529 count=2]]", base),
        Scenario("sse_error", "[[fake:sse_error]]", base, env=CLAUDE_FAST),
        Scenario("auth_401", "[[fake:auth_401]]", base, env={"CLAUDE_CODE_MAX_RETRIES": "0"}),
        Scenario("bad_400", "[[fake:bad_400]]", base),
        Scenario(
            "usage_limit_oauth",
            "[[fake:usage_limit reset=1900000000]]",
            base,
            env={"ANTHROPIC_API_KEY": None, "CLAUDE_CODE_OAUTH_TOKEN": "fake-oauth-token"},
        ),
        Scenario(
            "usage_limit_api_key",
            "[[fake:usage_limit reset=1900000000]]",
            base,
            env={"CLAUDE_CODE_MAX_RETRIES": "2"},
        ),
        Scenario(
            "hang_after_first_delta",
            "[[fake:hang_after_first_delta]]",
            base,
            env=CLAUDE_FAST,
            timeout=60,
        ),
        Scenario("no_response", "[[fake:no_response]]", base, env=CLAUDE_FAST),
        Scenario("long_tool", "[[fake:long_tool secs=5]]", base),
        Scenario(
            "long_tool_capped",
            "[[fake:long_tool secs=20]]",
            base,
            env={"BASH_MAX_TIMEOUT_MS": "3000"},
        ),
        Scenario("background", "[[fake:background secs=3]]", base),
        Scenario(
            "auth_check", "ping", ["-p", "--max-turns", "1"], env={"CLAUDE_CODE_MAX_RETRIES": "0"}
        ),
        Scenario(
            "auth_check_401",
            "ping [[fake:auth_401]]",
            ["-p", "--max-turns", "1"],
            env={"CLAUDE_CODE_MAX_RETRIES": "0"},
        ),
    ]


def codex_scenarios() -> list[Scenario]:
    ws = ["--json", "-s", "workspace-write"]
    wt = [
        *ws,
        "--add-dir",
        "{gitdir}",
        "--add-dir",
        "{common}/objects",
        "--add-dir",
        "{common}/refs",
        "--add-dir",
        "{common}/logs",
    ]
    ex = ["exec"]
    return [
        Scenario("text", "Say hello. [[fake:text]]", ws, sub=ex),
        Scenario(
            "write_commit",
            "Write a file and commit it. [[fake:write_commit]]",
            wt,
            sub=ex,
            expect_commit=True,
        ),
        Scenario("write_commit_no_add_dir", "[[fake:write_commit file=denied.txt]]", ws, sub=ex),
        Scenario(
            "write_commit_full_access",
            "[[fake:write_commit file=full.txt]]",
            ["--json", "-s", "danger-full-access"],
            sub=ex,
            expect_commit=True,
        ),
        Scenario(
            "resume",
            'Show the last commit. [[fake:bash cmd="git log --oneline -1"]]',
            ["--json"],
            sub=["exec", "resume", "{thread}"],
        ),
        Scenario(
            "resume_write_commit",
            "[[fake:write_commit file=resumed.txt]]",
            [
                "--json",
                "-c",
                'sandbox_mode="workspace-write"',
                "-c",
                'sandbox_workspace_write.writable_roots=["{gitdir}","{common}"]',
            ],
            sub=["exec", "resume", "{thread}"],
            expect_commit=True,
        ),
        Scenario(
            "dash_prompt",
            '- a prompt that starts with a dash [[fake:text text="dash ok"]]',
            ws,
            sub=ex,
        ),
        Scenario("version_prompt", "--version", ws, sub=ex),
        Scenario("bash", '[[fake:bash cmd="echo hello from bash"]]', ws, sub=ex),
        Scenario("max_turns", "[[fake:max_turns]]", ws, sub=ex, timeout=5),
        Scenario("rate_429", "[[fake:rate_429 retries=2 after=1]]", ws, sub=ex),
        Scenario("overload_529", "[[fake:overload_529]]", ws, sub=ex, provider=CODEX_FAST),
        Scenario("overload_529_twice", "[[fake:overload_529 count=2]]", ws, sub=ex),
        Scenario("sse_error", "[[fake:sse_error]]", ws, sub=ex),
        Scenario("server_500", "[[fake:server_500]]", ws, sub=ex, provider=CODEX_FAST),
        Scenario("quota", "[[fake:quota]]", ws, sub=ex),
        Scenario("usage_limit", "[[fake:usage_limit reset=1900000000]]", ws, sub=ex),
        Scenario("auth_401", "[[fake:auth_401]]", ws, sub=ex, provider=CODEX_FAST),
        Scenario("bad_400", "[[fake:bad_400]]", ws, sub=ex),
        Scenario(
            "hang_after_first_delta",
            "[[fake:hang_after_first_delta]]",
            ws,
            sub=ex,
            provider=CODEX_FAST,
        ),
        Scenario(
            "no_response", "[[fake:no_response]]", ws, sub=ex, provider=CODEX_FAST, timeout=30
        ),
        Scenario("long_tool", "[[fake:long_tool secs=5]]", ws, sub=ex),
        Scenario("background", "[[fake:background secs=3]]", ws, sub=ex),
    ]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(root: Path) -> tuple[Path, Path]:
    """A repo at ``root/repo`` with one commit and a linked worktree at ``repo/worktrees/w1``."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Fake Agent")
    _git(repo, "config", "user.email", "fake@example.invalid")
    (repo / ".gitignore").write_text("worktrees/\n")
    _git(repo, "add", ".gitignore")
    _git(repo, "commit", "-q", "-m", "init")
    _git(repo, "worktree", "add", "-q", "-b", "agent/w1", "worktrees/w1")
    return repo, repo / "worktrees" / "w1"


def run(
    argv: list[str], cwd: Path, env: dict[str, str], stdin: str, timeout: float
) -> tuple[int | None, str, str, float, bool]:
    """Run ``argv`` in its own process group; on timeout TERM then KILL that group."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    rc = proc.returncode
    try:  # children of the CLI (background shells) may outlive it in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return rc, out, err, time.monotonic() - start, timed_out


def event_key(cli: str, ev: dict[str, Any]) -> str:
    """``type/subtype`` for claude, ``type/item.type`` for codex, else ``type``."""
    t = str(ev.get("type"))
    sub = ev.get("subtype") if cli == "claude" else (ev.get("item") or {}).get("type")
    return f"{t}/{sub}" if sub else t


def parse_events(cli: str, stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            ev = {"type": "<non-json>", "text": line[:200]}
        events.append(ev if isinstance(ev, dict) else {"type": "<non-object>"})
    return events


def scrub(text: str, work: Path, port: int) -> str:
    """Replace the work folder and the server port with stable placeholders."""
    text = text.replace(str(work), "$WORK").replace(
        re.sub(r"[^A-Za-z0-9]", "-", str(work)), "-$WORK"
    )
    return re.sub(rf"127\.0\.0\.1:{port}\b", "127.0.0.1:$PORT", text)


class Runner:
    """Runs the scenarios of one CLI version in one work folder."""

    def __init__(
        self, api: FakeModelAPI, cli: str, version: str, work: Path, save: Path | None
    ) -> None:
        self.api, self.cli, self.version, self.work, self.save = api, cli, version, work, save
        self.repo, self.worktree = make_repo(work)
        self.home = work / "home"
        self.home.mkdir()
        self.session = str(uuid.uuid4())
        self.thread = ""
        self.sysfile = work / "append-system-prompt.txt"
        self.sysfile.write_text(
            'Answer as scripted. [[fake:text text="from the system prompt file"]]\n'
        )

    def binary(self) -> str:
        pkg = "claude-code" if self.cli == "claude" else "codex"
        return str(
            CLIS_ROOT
            / f"{self.cli}-{self.version}"
            / "node_modules"
            / ".bin"
            / ("claude" if pkg == "claude-code" else "codex")
        )

    def env(self, sc: Scenario) -> dict[str, str]:
        env = {"PATH": BASE_PATH, "HOME": str(self.home), "LANG": "C.UTF-8"}
        if self.cli == "claude":
            env.update(
                ANTHROPIC_BASE_URL=self.api.url,
                ANTHROPIC_API_KEY="test-key",
                CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                DISABLE_AUTOUPDATER="1",
            )
        else:
            env.update(CODEX_HOME=str(self.codex_home(sc)), FAKE_API_KEY="test-key")
        for key, value in sc.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def codex_home(self, sc: Scenario) -> Path:
        """A CODEX_HOME per provider setting; sessions persist in it, so resume finds them."""
        name = "codex-home" + ("-fast" if sc.provider else "")
        home = self.work / name
        home.mkdir(exist_ok=True)
        extra = "".join(f"{k} = {v}\n" for k, v in sc.provider.items())
        (home / "config.toml").write_text(
            f'model = "{CODEX_MODEL}"\nmodel_provider = "fake"\n\n'
            f'[model_providers.fake]\nname = "Fake API"\nbase_url = "{self.api.url}/v1"\n'
            f'env_key = "FAKE_API_KEY"\nwire_api = "responses"\n{extra}'
        )
        return home

    def argv(self, sc: Scenario) -> list[str]:
        common = self.repo / ".git"
        values = {
            "session": self.session,
            "thread": self.thread,
            "sysfile": str(self.sysfile),
            "gitdir": str(common / "worktrees" / "w1"),
            "common": str(common),
        }
        args = [a.format(**values) for a in sc.args]
        if self.cli == "claude":
            return [self.binary(), *args]
        sub = [a.format(**values) for a in sc.sub]
        return [self.binary(), *sub, *args, "-"]

    def run(self, sc: Scenario) -> Outcome:
        in_wt = sc.in_worktree if sc.in_worktree is not None else self.cli == "codex"
        cwd = self.worktree if in_wt else self.repo
        branch = "agent/w1" if in_wt else "main"
        head = _git(self.repo, "rev-parse", branch)
        seen = len(self.api.requests)
        argv = self.argv(sc)
        rc, out, err, secs, timed_out = run(argv, cwd, self.env(sc), sc.prompt + "\n", sc.timeout)
        committed = _git(self.repo, "rev-parse", branch) != head
        events = parse_events(self.cli, out)
        for ev in events:
            if ev.get("type") == "thread.started" and sc.name == "write_commit":
                self.thread = ev.get("thread_id", "")
        reqs = Counter(f"{r.behaviour}:{r.outcome}" for r in self.api.requests[seen:])
        result = next(
            (
                e
                for e in reversed(events)
                if e.get("type") in ("result", "turn.completed", "turn.failed")
            ),
            None,
        )
        if result and self.cli == "claude":
            result = {
                k: result.get(k)
                for k in (
                    "subtype",
                    "is_error",
                    "terminal_reason",
                    "stop_reason",
                    "num_turns",
                    "api_error_status",
                    "errors",
                    "result",
                )
            }
        if self.save:
            folder = self.save / f"{self.cli}-{self.version}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{sc.name}.jsonl").write_text(scrub(out, self.work, self.api.port))
        return Outcome(
            cli=self.cli,
            version=self.version,
            scenario=sc.name,
            argv=[scrub(a, self.work, self.api.port) for a in argv],
            rc=rc,
            seconds=round(secs, 1),
            timed_out=timed_out,
            committed=committed,
            events=dict(Counter(event_key(self.cli, e) for e in events)),
            last_events=[event_key(self.cli, e) for e in events[-3:]],
            result=result,
            requests=dict(reqs),
            stderr_tail=scrub(
                "\n".join(l for l in err.splitlines() if "proceeding, even though" not in l)[-400:],
                self.work,
                self.api.port,
            ),
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.fakeapi.try_clis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--claude", nargs="*", default=[], help="claude versions (installed under $AGENT_CLIS_ROOT)"
    )
    ap.add_argument("--codex", nargs="*", default=[], help="codex versions")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument(
        "--save", type=Path, help="folder for <cli>-<version>/<scenario>.jsonl captures"
    )
    ap.add_argument("--summary", type=Path, help="write all outcomes as JSON here")
    ap.add_argument("--log", type=Path, help="fake API request log (JSON lines)")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    outcomes: list[Outcome] = []
    base = Path(
        tempfile.mkdtemp(
            prefix="try_clis-",
            dir=Path.home() / ".cache" if (Path.home() / ".cache").is_dir() else None,
        )
    )
    with FakeModelAPI(log_path=args.log, hang_seconds=300) as api:
        for cli, versions, scenarios in (
            ("claude", args.claude, claude_scenarios()),
            ("codex", args.codex, codex_scenarios()),
        ):
            for version in versions:
                work = base / f"{cli}-{version}"
                work.mkdir()
                runner = Runner(api, cli, version, work, args.save)
                for sc in scenarios:
                    needed = sc.name == "write_commit" and any(n.startswith("resume") for n in only)
                    if only and sc.name not in only and not needed:
                        continue
                    o = runner.run(sc)
                    outcomes.append(o)
                    res = o.result or {}
                    print(
                        f"{cli}-{version} {sc.name:26} rc={o.rc} t={o.seconds:6.1f}s"
                        f"{' TIMEOUT' if o.timed_out else ''}{' commit' if o.committed else ''}"
                        f" last={o.last_events} result={res.get('subtype', '')}"
                        f"{'/error' if res.get('is_error') else ''} reqs={o.requests}",
                        flush=True,
                    )
    if args.summary:
        args.summary.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"work folders kept in {base}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
