"""A simulated coding agent that speaks Claude Code's ``--output-format stream-json``.

Run in the agent's working directory (a git worktree)::

    python -m harness.agents.sim --item ITEM.json [--session-id UUID] [--prompt-file PATH]

It prints one JSON event per line, flushed as it goes, in the shapes Claude Code
uses: a ``system``/``init`` event, ``assistant`` messages holding ``text`` and
``tool_use`` blocks, ``user`` messages holding ``tool_result`` blocks, and a final
``result`` (``subtype``, ``is_error``, ``duration_ms``, ``num_turns``, ``result``,
``session_id``, ``total_cost_usd``, ``usage``). On success it really edits the
worktree and (unless told not to) commits, like an agent that committed its work.

Behaviour comes from the item's ``meta.sim`` (a dict, or just a behaviour name):

``behavior``
    ``succeed`` (default) edit, commit, success result, exit 0.
    ``fail`` a failing tool call, then an ``error_during_execution`` result, exit 1.
    ``hang`` init and one assistant event, then silence forever (a stall).
    ``hang_after_result`` a full success, then never exits.
    ``crash`` a few events, then the process kills itself with ``signal``
    (default ``KILL``; e.g. ``SEGV``, ``ABRT``; core dumps are disabled).
    ``garbage`` a normal success interleaved with non-JSON lines (plain text,
    truncated JSON, invalid UTF-8, a blank line, a 100 kB line), JSON that is
    not an object, and unknown event types.
    ``slow`` a normal success spread over ``seconds`` (default 2.0) with a
    progress event at least every ~0.25 s.
    ``rate_limit`` a ``rate_limit_event`` (status ``rejected``, ``resetsAt`` =
    now + ``reset_after`` s, default 2, ``rateLimitType`` ``five_hour``), then the
    usage-limit error result, exit 1.
    ``exceed_budget`` some work, then an ``error_max_budget_usd`` result whose
    cost exceeds ``max_budget_usd`` (meta, else ``--max-budget-usd``, else 0.05), exit 1.
    ``max_turns`` some work, then an ``error_max_turns`` result, exit 1.
    ``conflict`` a success that rewrites line 1 of ``file`` (default
    ``shared.txt``) with text unique to the item, so two such items conflict.

Other keys: ``fail_attempts`` N (attempts 1..N fail, later ones run ``behavior``);
``times`` N (``behavior`` applies on attempts 1..N, later attempts succeed);
``seconds`` (total duration, default 0.05; 2.0 for ``slow``); ``file`` and
``content`` (the file edited and the line written); ``commit`` (default true;
false leaves the change uncommitted); ``message`` (text of a ``fail`` result);
``model``. The attempt number is read from ``HARNESS_ATTEMPT`` (default 1).

Only the standard library and orjson are imported: this starts once per attempt.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import orjson

BEHAVIORS = ("succeed", "fail", "hang", "hang_after_result", "crash", "garbage", "slow",
             "rate_limit", "exceed_budget", "max_turns", "conflict")
TOOLS = ["Task", "Bash", "Glob", "Grep", "LS", "Read", "Edit", "Write", "TodoWrite"]
DEFAULT_MODEL = "claude-sim"
USAGE_LIMIT_TEXT = "Claude AI usage limit reached|{reset}"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "harness-sim",
                "GIT_AUTHOR_EMAIL": "sim@parallel-harness.invalid",
                "GIT_COMMITTER_NAME": "harness-sim",
                "GIT_COMMITTER_EMAIL": "sim@parallel-harness.invalid"}
SLOW_STEP = 0.25  # a slow session emits an event at least this often


def new_uuid() -> str:
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Session:
    """Emits events and keeps the totals a ``result`` event reports."""

    def __init__(self, session_id: str, model: str, prompt: str) -> None:
        self.session_id, self.model = session_id, model
        self.prompt_size = len(prompt.encode())
        self.started = time.monotonic()
        self.turns = 0
        self.usage = {"input_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 0}
        self.out = sys.stdout.buffer
        self.pace: tuple[float, float] | None = None  # (next deadline, gap)

    # -- output ----------------------------------------------------------------

    def raw(self, line: bytes) -> None:
        self.out.write(line + b"\n")
        self.out.flush()

    def emit(self, event: dict[str, Any]) -> None:
        self.wait_turn()
        self.raw(orjson.dumps(event))

    def set_pace(self, seconds: float, events: int) -> None:
        gap = max(0.0, seconds) / max(1, events)
        self.pace = (time.monotonic() + gap, gap)

    def wait_turn(self) -> None:
        if self.pace is None:
            return
        deadline, gap = self.pace
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.pace = (max(deadline, time.monotonic() - gap) + gap, gap)

    # -- events ----------------------------------------------------------------

    def init(self, cwd: str) -> None:
        self.emit({"type": "system", "subtype": "init", "cwd": cwd, "session_id": self.session_id,
                   "tools": TOOLS, "mcp_servers": [], "model": self.model,
                   "permissionMode": "default", "slash_commands": [], "apiKeySource": "none",
                   "output_style": "default", "claude_code_version": "sim", "uuid": new_uuid()})

    def _turn_usage(self) -> dict[str, int]:
        k, base = self.turns, self.prompt_size // 4 + 500
        usage = {"input_tokens": 8 + k,
                 "cache_creation_input_tokens": base if k == 0 else 40 + k,
                 "cache_read_input_tokens": 0 if k == 0 else base + 40 * (k - 1),
                 "output_tokens": 20 + self.prompt_size % 50 + 10 * k}
        for key, value in usage.items():
            self.usage[key] += value
        self.turns += 1
        return usage

    def assistant(self, block: dict[str, Any], *, error: str | None = None,
                  synthetic: bool = False) -> None:
        usage = ({key: 0 for key in self.usage} if synthetic else self._turn_usage())
        event: dict[str, Any] = {
            "type": "assistant",
            "message": {"id": "msg_sim_" + new_uuid().replace("-", "")[:24], "type": "message",
                        "role": "assistant",
                        "model": "<synthetic>" if synthetic else self.model,
                        "content": [block], "stop_reason": None, "stop_sequence": None,
                        "usage": {**usage, "service_tier": "standard"}},
            "parent_tool_use_id": None, "session_id": self.session_id, "uuid": new_uuid()}
        if error:
            event["error"] = error
        self.emit(event)

    def text(self, text: str) -> None:
        self.assistant({"type": "text", "text": text})

    def tool(self, name: str, tool_input: dict[str, Any], run: Any) -> tuple[str, bool]:
        """An assistant tool_use, then the user tool_result of ``run()`` -> (output, is_error)."""
        tool_id = "toolu_sim_" + new_uuid().replace("-", "")[:20]
        self.assistant({"type": "tool_use", "id": tool_id, "name": name, "input": tool_input})
        output, is_error = run()
        self.emit({"type": "user",
                   "message": {"role": "user",
                               "content": [{"type": "tool_result", "tool_use_id": tool_id,
                                            "content": output, "is_error": is_error}]},
                   "parent_tool_use_id": None, "session_id": self.session_id,
                   "uuid": new_uuid()})
        return output, is_error

    def cost(self) -> float:
        u = self.usage
        dollars = (u["input_tokens"] * 3.0 + u["output_tokens"] * 15.0
                   + u["cache_creation_input_tokens"] * 3.75
                   + u["cache_read_input_tokens"] * 0.3) / 1_000_000
        return round(dollars, 6)

    def result(self, subtype: str, is_error: bool, text: str, *,
               cost: float | None = None) -> None:
        elapsed_ms = int((time.monotonic() - self.started) * 1000)
        event: dict[str, Any] = {
            "type": "result", "subtype": subtype, "is_error": is_error,
            "duration_ms": elapsed_ms, "duration_api_ms": elapsed_ms // 2,
            "num_turns": self.turns, "result": text, "session_id": self.session_id,
            "total_cost_usd": self.cost() if cost is None else cost,
            "usage": {**self.usage, "server_tool_use": {"web_search_requests": 0},
                      "service_tier": "standard"},
            "permission_denials": [], "uuid": new_uuid()}
        if subtype != "success":
            event["errors"] = [text]
        self.emit(event)


# -- the work ---------------------------------------------------------------------


def git(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for key, value in GIT_IDENTITY.items():
        env.setdefault(key, value)
    return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], env=env,
                          capture_output=True, text=True)


def edit_file(s: Session, path: Path, new_line: str, *, first_line: bool) -> None:
    """Write ``path`` (new) or edit it: replace line 1 (``first_line``) or append a line."""
    shown = str(path.resolve())
    if not path.exists():
        def create() -> tuple[str, bool]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new_line + "\n")
            return f"File created successfully at: {shown}", False
        s.tool("Write", {"file_path": shown, "content": new_line + "\n"}, create)
        return
    old = path.read_text()
    lines = old.splitlines(keepends=True)
    if first_line and lines:
        old_string = lines[0].rstrip("\n")
        new_text = new_line + "\n" + "".join(lines[1:])
    else:
        old_string = lines[-1].rstrip("\n") if lines else ""
        new_text = old + ("" if not old or old.endswith("\n") else "\n") + new_line + "\n"
        new_line = (old_string + "\n" + new_line) if old_string else new_line

    def edit() -> tuple[str, bool]:
        path.write_text(new_text)
        return f"The file {shown} has been updated.", False
    s.tool("Edit", {"file_path": shown, "old_string": old_string, "new_string": new_line,
                    "replace_all": False}, edit)


def commit(s: Session, message: str) -> bool:
    quoted = message.replace("'", "'\\''")

    def run() -> tuple[str, bool]:
        added = git("add", "-A")
        if added.returncode != 0:
            return (added.stdout + added.stderr).strip(), True
        done = git("commit", "-q", "-m", message)
        if done.returncode != 0:
            return (done.stdout + done.stderr).strip() or "git commit failed", True
        head = git("log", "-1", "--format=%h %s")
        return head.stdout.strip(), head.returncode != 0
    _, is_error = s.tool("Bash", {"command": f"git add -A && git commit -m '{quoted}'",
                                  "description": "Commit the change"}, run)
    return not is_error


def do_work(s: Session, item: dict[str, Any], cfg: dict[str, Any], attempt: int,
            behavior: str) -> str:
    """Edit (and usually commit) in the working directory; return the summary text."""
    item_id = str(item.get("id") or "item")
    title = str(item.get("title") or item_id)
    if behavior == "conflict":
        target = str(cfg.get("file") or "shared.txt")
        line = str(cfg.get("content") or f"{item_id} rewrote line 1 (attempt {attempt})")
    else:
        target = str(cfg.get("file") or f"sim/{item_id}.txt")
        line = str(cfg.get("content") or f"{item_id}: {title} (attempt {attempt})")
    s.text(f"I'll make the change for {title!r} in {target}.")
    edit_file(s, Path(target), line, first_line=behavior == "conflict")
    summary = f"Updated {target}."
    if wants_commit(cfg):
        if commit(s, f"{item_id}: {title} (sim attempt {attempt})"):
            summary += " Committed the change."
        else:
            summary += " Could not commit the change."
    s.text(f"Done. {summary}")
    return summary


def wants_commit(cfg: dict[str, Any]) -> bool:
    return cfg.get("commit", True) not in (False, "false", "no", 0)


def session_steps(cfg: dict[str, Any]) -> int:
    """Events after init in a success session: text, edit (2), commit (2), text, result."""
    return 7 if wants_commit(cfg) else 5


def sleep_forever() -> NoReturn:
    while True:
        time.sleep(3600)


def crash(s: Session, cfg: dict[str, Any]) -> NoReturn:
    name = str(cfg.get("signal") or "KILL").upper()
    signum = getattr(signal, name if name.startswith("SIG") else "SIG" + name, signal.SIGKILL)
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    s.out.flush()
    try:
        signal.signal(signum, signal.SIG_DFL)  # Python ignores some (SIGPIPE) by default
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signum)
    time.sleep(5)
    os.kill(os.getpid(), signal.SIGKILL)
    sleep_forever()


def emit_garbage(s: Session, which: int) -> None:
    junk: list[bytes] = [
        b"sim: warming up (this line is not JSON)",
        orjson.dumps({"type": "sim_debug", "session_id": s.session_id, "note": "unknown type"}),
        b'{"type": "assistant", "message": {"content": [',
        b"[1, 2, 3]",
        b"\xff\xfe invalid utf-8 \xc3\x28",
        b"",
        b"x" * 100_000,
        orjson.dumps({"type": "system", "subtype": "sim_unknown_subtype",
                      "session_id": s.session_id}),
        b"42",
    ]
    for line in junk[which::3]:
        s.raw(line)
    sys.stderr.write(f"sim: garbage batch {which}\n")
    sys.stderr.flush()


def run(item: dict[str, Any], prompt: str, session_id: str, max_budget: float | None) -> int:
    meta = item.get("meta") or {}
    cfg = meta.get("sim") if isinstance(meta, dict) else None
    if isinstance(cfg, str):
        cfg = {"behavior": cfg}
    cfg = dict(cfg or {})
    try:
        attempt = int(os.environ.get("HARNESS_ATTEMPT") or 1)
    except ValueError:
        attempt = 1
    behavior = str(cfg.get("behavior") or "succeed")
    if attempt <= int(cfg.get("fail_attempts") or 0):
        behavior = "fail"
    elif cfg.get("times") is not None and attempt > int(cfg["times"]):
        behavior = "succeed"
    default_seconds = 2.0 if behavior == "slow" else 0.05
    seconds = float(cfg.get("seconds", default_seconds))

    s = Session(session_id, str(cfg.get("model") or DEFAULT_MODEL), prompt)
    s.init(os.getcwd())
    if behavior not in BEHAVIORS:
        s.result("error_during_execution", True,
                 f"unknown sim behavior {behavior!r}; expected one of {', '.join(BEHAVIORS)}")
        return 2

    if behavior in ("succeed", "conflict", "hang_after_result", "garbage"):
        s.set_pace(seconds, session_steps(cfg))
        if behavior == "garbage":
            emit_garbage(s, 0)
        summary = do_work(s, item, cfg, attempt, behavior)
        if behavior == "garbage":
            emit_garbage(s, 1)
        s.result("success", False, summary)
        if behavior == "garbage":
            emit_garbage(s, 2)
        if behavior == "hang_after_result":
            sleep_forever()
        return 0

    if behavior == "slow":
        progress = max(3, min(2000, int(seconds / SLOW_STEP) + 1))
        s.set_pace(seconds, progress + 1 + session_steps(cfg))
        s.text("I'll work through this carefully; it will take a while.")
        for k in range(1, progress + 1):
            s.text(f"Still working ({k}/{progress})...")
        summary = do_work(s, item, cfg, attempt, behavior)
        s.result("success", False, summary)
        return 0

    if behavior == "hang":
        s.text("I'll start by looking at the repository.")
        sleep_forever()

    if behavior == "crash":
        s.text("I'll start by looking at the repository.")
        tool_id = "toolu_sim_" + new_uuid().replace("-", "")[:20]
        s.assistant({"type": "tool_use", "id": tool_id, "name": "Bash",
                     "input": {"command": "ls", "description": "List files"}})
        crash(s, cfg)

    if behavior == "fail":
        s.set_pace(seconds, 4)
        s.text("I'll run the tests first.")
        s.tool("Bash", {"command": "python -m pytest -q", "description": "Run the tests"},
               lambda: ("Error: simulated failure: 1 failed, 0 passed (exit code 1)", True))
        message = str(cfg.get("message") or f"simulated failure (attempt {attempt})")
        s.text(f"I could not complete the task: {message}")
        s.result("error_during_execution", True, message)
        return 1

    if behavior == "rate_limit":
        reset = int(time.time() + float(cfg.get("reset_after", 2)))
        s.emit({"type": "rate_limit_event",
                "rate_limit_info": {"status": "rejected", "resetsAt": reset,
                                    "rateLimitType": "five_hour", "isUsingOverage": False,
                                    "overageStatus": "rejected"},
                "session_id": session_id, "uuid": new_uuid()})
        text = USAGE_LIMIT_TEXT.format(reset=reset)
        s.assistant({"type": "text", "text": text}, error="rate_limit", synthetic=True)
        s.result("success", True, text, cost=0.0)
        return 1

    # exceed_budget / max_turns: do some work first, then stop at the ceiling
    s.set_pace(seconds, 4)
    s.text("I'll start by reading the code.")
    s.tool("Read", {"file_path": str(Path("README.md").resolve())},
           lambda: ("(file read)", False))
    if behavior == "exceed_budget":
        budget = float(cfg.get("max_budget_usd") or max_budget or 0.05)
        spent = round(max(s.cost(), budget * 1.1 + 0.0001), 6)
        s.result("error_max_budget_usd", True,
                 f"Reached maximum budget (${budget:g}); spent ${spent:g}", cost=spent)
        return 1
    s.text("Continuing...")
    s.result("error_max_turns", True, f"Reached maximum number of turns ({s.turns})")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.agents.sim",
                                     description="Simulated Claude Code agent (stream-json).")
    parser.add_argument("--item", required=True, help="path to the item JSON")
    parser.add_argument("--session-id", default=None)
    parser.add_argument("--prompt-file", default=None)
    parser.add_argument("--max-budget-usd", type=float, default=None)
    args, _unknown = parser.parse_known_args(argv)  # tolerate claude-style flags
    try:
        item = orjson.loads(Path(args.item).read_bytes())
        if not isinstance(item, dict):
            raise ValueError("item is not a JSON object")
        prompt = (Path(args.prompt_file).read_text() if args.prompt_file
                  else str(item.get("prompt") or item.get("title") or ""))
    except (OSError, ValueError) as exc:
        print(f"harness.agents.sim: cannot read input: {exc}", file=sys.stderr)
        return 2
    try:
        return run(item, prompt, args.session_id or new_uuid(), args.max_budget_usd)
    except BrokenPipeError:  # the reader went away; nobody is listening
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
