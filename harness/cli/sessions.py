"""``parallel-harness sessions ...``: read what attempts left behind.

The commands and their text / JSON rendering; reading and analysing the
attempt directories (``logs/<item-id>/<attempt>/``) is harness.views.attempts
and harness.agents.transcript. ``logs`` (harness.cli.logs) shares the
attempt-picking and following helpers below.

Only click is imported at module level (the rest inside the commands), so
registering these commands costs ``parallel-harness status`` nothing. Exit
codes: 0 ok, 1 ``watch``/``logs --follow`` stopped by ``--timeout`` before the
attempt ended, 2 usage errors (unknown item or attempt, no logs).
"""

from __future__ import annotations


import click

from harness.cli.common import EXIT_FAILURES as EXIT_TIMEOUT
from harness.cli.common import usage_error, workspace

POLL_INTERVAL = 0.1  # seconds between reads when following a growing file
LIST_LIMIT = 50
METRIC_ROWS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
               "cost_usd", "turns", "tool_errors", "duration_s", "events", "unknown_events",
               "non_json_lines", "model")

attempt_option = click.option(
    "--attempt", "attempt", type=click.IntRange(min=0), default=None, metavar="N",
    help="Attempt number (default: the latest).")
_all_attempts_option = click.option(
    "--attempt", "attempt", type=click.IntRange(min=0), default=None, metavar="N",
    help="Only this attempt (default: every attempt).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def pick_attempts(ctx: click.Context, item_id: str, attempt: int | None, *, every: bool):
    """(workspace, [(attempt, dir)]) of item ``item_id`` (see attempts.pick); exit 2 if none."""
    from harness.views.attempts import NoAttempt, pick

    ws = workspace(ctx)
    try:
        return ws, pick(ws, item_id, attempt, every=every)
    except NoAttempt as exc:
        usage_error(str(exc))


def _json_bytes(data: object) -> bytes:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)


def _emit_json(data: object) -> None:
    click.echo(_json_bytes(data).decode())


def _table(rows: list[list[str]], indent: str = "") -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 or word == "failed" else f"{n} {word}s"


def _most_first(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _name_counts(counts: dict[str, int]) -> str:
    """Counts by name, most first: "Bash 3, Read 1"."""
    return ", ".join(f"{k} {v}" for k, v in _most_first(counts).items())


def _tally(problems: list[dict]) -> str:
    """Problems per kind, in order of first appearance: "2 tool_error, 1 non_json"."""
    from collections import Counter

    return ", ".join(f"{v} {k}" for k, v in Counter(p["kind"] for p in problems).items())


def _timeline_line(rec: dict) -> str:
    when = f"+{rec['t']:.1f}s" if rec.get("t") is not None else f"#{rec['line']}"
    return f"{when:>9}  {rec['type']:<18} {rec['text']}"


def _ended_line(result: dict) -> str:
    return f"ended: {result.get('reason')}: {result.get('detail')}"


def _render_summary(info: dict, title: str = "") -> None:
    from harness.agents.transcript import dur, preview, when

    m = info["metrics"]
    head = f"{info['item']} attempt {info['attempt']}: {info['reason']}"
    if info.get("queue"):
        head += f" (queue: {info['queue']})"
    click.echo(head + (f"  — {title}" if title else ""))
    calls = m.get("tool_calls") or {}
    by_name = _name_counts(calls)
    rows = [
        ["detail", info.get("detail") or "-"],
        ["started", f"{when(info['started_at'])}   duration {dur(info['duration_s'])}"],
        ["worker", f"{info.get('worker') or '-'}   session {info.get('session_id') or '-'}"],
        ["model", str(m.get("model") or "-")],
        ["turns", str(m.get("turns", 0))],
        ["tokens", f"input {m.get('input_tokens', 0)}  output {m.get('output_tokens', 0)}  "
                   f"cache write {m.get('cache_creation_tokens', 0)}  "
                   f"cache read {m.get('cache_read_tokens', 0)}  (total {info['tokens']})"],
        ["cost", f"${float(m.get('cost_usd') or 0):.4f}"],
        ["tools", _count(sum(calls.values()), "call") + (f": {by_name}" if by_name else "")
         + f"   ({_count(m.get('tool_errors', 0), 'failed')})"],
    ]
    problems = info.get("problems")
    if problems is not None:  # the stream was read: tally what `sessions errors` would list
        rows.append(["errors", _tally(problems) or "none"])
    else:
        rows.append(["errors", str(len(m.get("errors") or []))])
    rows += [["", f"- {preview(e)}"] for e in (m.get("errors") or [])[:5]]
    if "lines" in info:
        lines = info["lines"]
        rows.append(["stream", f"{lines['events']} events, {lines['non_json']} non-JSON lines"
                               f" (metrics from {info['metrics_source']})"])
    commit = (info.get("commit") or "")[:12]
    rows.append(["branch", f"{info.get('branch') or '-'}" + (f" @ {commit}" if commit else "")])
    rows.append(["logs", info["dir"]])
    rows.append(["", " ".join(info.get("files") or {})])
    _table(rows, indent="  ")


def _metrics_cell(key: str, value: object) -> str:
    if key == "cost_usd" and isinstance(value, float):
        return f"${value:.4f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


def last_lines(data: bytes, n: int | None) -> bytes:
    """The last ``n`` lines of ``data`` (all if None), keeping a final newline if it had one."""
    if n is None:
        return data
    lines = data.split(b"\n")
    trailing = lines[-1] == b""
    lines = lines[:-1] if trailing else lines
    return b"\n".join(lines[-n:]) + (b"\n" if trailing else b"")

def follow_end(how: str, item_id: str, n: int, timeout: float | None) -> None:
    if how == "timeout":
        click.echo(f"stopped: --timeout {timeout:g}s passed before {item_id} attempt {n} ended",
                   err=True)
        raise SystemExit(EXIT_TIMEOUT)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@click.group()
def sessions() -> None:
    """Inspect agent sessions: what each attempt of an item did, cost and logged.

    Reads logs/<item>/<attempt>/ (events.jsonl, result.json, metrics.json,
    stderr.log). ID is an item id; --attempt N picks one attempt.

    \b
    Examples:
      parallel-harness sessions list --limit 10
      parallel-harness sessions summary fix-parser
      parallel-harness sessions watch fix-parser
    """


@sessions.command("list", short_help="Every attempt with logs, newest first.")
@click.option("--limit", type=click.IntRange(min=0), default=LIST_LIMIT, show_default=True,
              metavar="N",
              help="Show at most this many attempts (0: all).")
@_json_option
@click.pass_context
def list_cmd(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Every attempt that has a log directory, newest first.

    Columns: item, attempt, reason (running / unfinished if it has no
    result.json yet), start, duration, tokens (all kinds), cost.

    \b
    Example:
      parallel-harness sessions list --limit 20 --json
    """
    from harness.views import attempts
    from harness.agents.transcript import dur, when

    ws = workspace(ctx)
    everything = attempts.all_attempts(ws)
    shown = everything[:limit] if limit else everything
    running = attempts.running_attempts(ws)
    infos = [attempts.attempt_info(item_id, n, d, running=running, parse=False)
             for item_id, n, d in shown]
    if as_json:
        keys = ("item", "attempt", "reason", "detail", "queue", "started_at", "ended_at",
                "duration_s", "tokens", "cost_usd", "turns", "dir")
        _emit_json([{k: i[k] for k in keys} for i in infos])
        return
    if not infos:
        click.echo(f"no attempts in {ws.logs_dir}")
        return
    rows = [["ITEM", "ATTEMPT", "REASON", "STARTED", "DURATION", "TOKENS", "COST"]]
    rows += [[i["item"], str(i["attempt"]), i["reason"], when(i["started_at"]),
              dur(i["duration_s"]), str(i["tokens"]), f"${float(i['cost_usd'] or 0):.4f}"]
             for i in infos]
    _table(rows)
    if len(shown) < len(everything):
        click.echo(f"({len(shown)} of {len(everything)} attempts; --limit 0 for all)")


@sessions.command(short_help="Summary of the most recent attempt.")
@_json_option
@click.pass_context
def latest(ctx: click.Context, as_json: bool) -> None:
    """Summary of the most recently started attempt of any item.

    \b
    Example:
      parallel-harness sessions latest
    """
    from harness.views import attempts

    ws = workspace(ctx)
    everything = attempts.all_attempts(ws)
    if not everything:
        usage_error(f"no attempt logs in {ws.logs_dir}")
    item_id, n, d = everything[0]
    info = attempts.attempt_info(item_id, n, d, running=attempts.running_attempts(ws))
    if as_json:
        _emit_json(info)
    else:
        _render_summary(info, attempts.item_title(d))


@sessions.command(short_help="Per attempt: outcome, tokens, cost, tools, paths.")
@click.argument("item_id", metavar="ID")
@_all_attempts_option
@_json_option
@click.pass_context
def summary(ctx: click.Context, item_id: str, attempt: int | None, as_json: bool) -> None:
    """Per attempt of item ID: reason, detail, turns, tokens by kind, cost, tools, errors.

    Also duration, branch/commit and the paths of the attempt's log files.

    \b
    Example:
      parallel-harness sessions summary fix-parser --attempt 2
    """
    from harness.views import attempts

    ws, picked = pick_attempts(ctx, item_id, attempt, every=True)
    running = attempts.running_attempts(ws)
    infos = [attempts.attempt_info(item_id, n, d, running=running) for n, d in picked]
    title = attempts.item_title(picked[-1][1])
    if as_json:
        _emit_json({"item": item_id, "title": title, "attempts": infos})
        return
    for k, info in enumerate(infos):
        if k:
            click.echo()
        _render_summary(info, title)


@sessions.command(short_help="Tool calls by name, and in order with args.")
@click.argument("item_id", metavar="ID")
@attempt_option
@click.option("--full", is_flag=True, help="Show each call's whole input, untruncated.")
@_json_option
@click.pass_context
def tools(ctx: click.Context, item_id: str, attempt: int | None, full: bool,
          as_json: bool) -> None:
    """Tool calls of an attempt: counts by name, then each call in order with its arguments.

    \b
    Example:
      parallel-harness sessions tools fix-parser --full
    """
    from collections import Counter

    import orjson

    from harness.views import attempts
    from harness.agents.transcript import Transcript

    _, ((n, d),) = pick_attempts(ctx, item_id, attempt, every=False)
    transcript = attempts.load(d) or Transcript()
    calls = transcript.calls
    counts = _most_first(Counter(c["name"] for c in calls))
    if as_json:
        _emit_json({"item": item_id, "attempt": n, "counts": counts, "calls": calls})
        return
    errors = sum(1 for c in calls if c["is_error"])
    click.echo(f"{item_id} attempt {n}: {_count(len(calls), 'tool call')} ({errors} failed)")
    if transcript.text_mode:
        click.echo("  (shell agent: no event stream)")
    _table([[name, str(count)] for name, count in counts.items()], indent="  ")
    if calls:
        click.echo("sequence:")
    rows = []
    for c in calls:
        arg = orjson.dumps(c["input"], default=str).decode() if full else c["arg"]
        status = {True: "ERROR", False: "ok", None: "-"}[c["is_error"]]
        rows.append([f"#{c['index']}", f"line {c['line']}", c["name"], status, arg])
    _table(rows, indent="  ")


@sessions.command(short_help="Failed tools, error results, bad lines, stderr.")
@click.argument("item_id", metavar="ID")
@attempt_option
@click.option("--tail", "tail_lines", type=click.IntRange(min=0), default=20, show_default=True,
              metavar="N",
              help="Lines of stderr.log to show.")
@_json_option
@click.pass_context
def errors(ctx: click.Context, item_id: str, attempt: int | None, tail_lines: int,
           as_json: bool) -> None:
    """Errors of an attempt: failed tool results, error results, non-JSON lines, stderr tail.

    \b
    Example:
      parallel-harness sessions errors fix-parser --tail 50
    """
    from harness.views import attempts
    from harness.agents.transcript import Transcript

    _, ((n, d),) = pick_attempts(ctx, item_id, attempt, every=False)
    problems = (attempts.load(d) or Transcript()).errors
    result = attempts.read_json(d / "result.json")
    stderr = attempts.stderr_lines(d)
    stderr_tail = stderr[-tail_lines:] if tail_lines else []
    outcome = {k: result.get(k) for k in ("reason", "detail", "queue")} if result else None
    if as_json:
        _emit_json({"item": item_id, "attempt": n, "outcome": outcome, "errors": problems,
                    "stderr_lines": len(stderr), "stderr_tail": stderr_tail,
                    "stderr_file": str(d / "stderr.log")})
        return
    click.echo(f"{item_id} attempt {n}: {_tally(problems) or 'no errors in the stream'}")
    _table([[f"line {e['line']}", e["kind"], e["text"]] for e in problems], indent="  ")
    if outcome and outcome["reason"] != "succeeded":
        click.echo(f"outcome: {outcome['reason']}: {outcome['detail']}")
    if stderr_tail:
        click.echo(f"stderr.log (last {len(stderr_tail)} of {len(stderr)} lines):")
        for line in stderr_tail:
            click.echo(f"  {line}")
    elif not stderr:
        click.echo("stderr.log: empty or missing")


@sessions.command(short_help="One line per event of an attempt.")
@click.argument("item_id", metavar="ID")
@attempt_option
@_json_option
@click.pass_context
def timeline(ctx: click.Context, item_id: str, attempt: int | None, as_json: bool) -> None:
    """One line per stream event: time since the first event (or #line), type, description.

    Claude Code's stream-json lines usually carry no time, so #N (the line
    number in events.jsonl) is shown unless an event has a timestamp.

    \b
    Example:
      parallel-harness sessions timeline fix-parser --attempt 1
    """
    from harness.views import attempts

    _, ((n, d),) = pick_attempts(ctx, item_id, attempt, every=False)
    transcript = attempts.load(d)
    records = transcript.records if transcript else []
    if as_json:
        _emit_json({"item": item_id, "attempt": n, "events": records})
        return
    click.echo(f"{item_id} attempt {n}: {len(records)} events")
    for rec in records:
        click.echo(_timeline_line(rec))
    result = attempts.read_json(d / "result.json")
    if result:
        click.echo(_ended_line(result))


@sessions.command(short_help="metrics.json per attempt and the item total.")
@click.argument("item_id", metavar="ID")
@_all_attempts_option
@_json_option
@click.pass_context
def metrics(ctx: click.Context, item_id: str, attempt: int | None, as_json: bool) -> None:
    """metrics.json of each attempt, and the item's total (summed with Metrics.add).

    An attempt still running has no metrics.json yet: its metrics come from
    the stream so far.

    \b
    Example:
      parallel-harness sessions metrics fix-parser --json
    """
    from harness.views.attempts import item_metrics

    _, picked = pick_attempts(ctx, item_id, attempt, every=True)
    per, total = item_metrics(picked)
    total_dict = total.as_dict()
    if as_json:
        _emit_json({"item": item_id, "attempts": per, "total": total_dict})
        return
    dicts = [*(p["metrics"] for p in per), total_dict]
    rows = [["", *(f"attempt {p['attempt']}" for p in per), "total"]]
    rows += [[key, *(_metrics_cell(key, m.get(key)) for m in dicts)] for key in METRIC_ROWS]
    rows.append(["tool_calls", *(str(sum((m.get("tool_calls") or {}).values())) for m in dicts)])
    rows.append(["errors", *(str(len(m.get("errors") or [])) for m in dicts)])
    rows.append(["source", *(p["source"] for p in per), "sum"])
    click.echo(f"{item_id}: {len(per)} attempt(s)")
    _table(rows)
    if total.tool_calls:
        click.echo("tool calls (total): " + _name_counts(total.tool_calls))


@sessions.command(short_help="An item's attempts as one JSON document.")
@click.argument("item_id", metavar="ID")
@_all_attempts_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of stdout.")
@click.pass_context
def export(ctx: click.Context, item_id: str, attempt: int | None, output: str | None) -> None:
    """One JSON document: the item, and each attempt's result, metrics and events.

    Lines of events.jsonl that are not JSON are listed under "bad_lines";
    a shell agent's attempt has no events.

    \b
    Example:
      parallel-harness sessions export fix-parser -o fix-parser.json
    """
    from harness.views import attempts

    ws, picked = pick_attempts(ctx, item_id, attempt, every=True)
    doc = attempts.export(ws, item_id, picked)
    if output is None:
        _emit_json(doc)
        return
    with open(output, "wb") as f:
        f.write(_json_bytes(doc) + b"\n")
    events = sum(len(a["events"]) for a in doc["attempts"])
    click.echo(f"wrote {output} ({len(doc['attempts'])} attempt(s), {events} events)", err=True)


@sessions.command(short_help="Follow a running attempt's events live.")
@click.argument("item_id", metavar="ID")
@attempt_option
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Stop after this many seconds (exit 1 if the attempt has not ended).")
@click.option("--interval", type=click.FloatRange(min=0.01), default=POLL_INTERVAL,
              metavar="SECONDS",
              show_default=True, help="Seconds between reads.")
@_json_option
@click.pass_context
def watch(ctx: click.Context, item_id: str, attempt: int | None, timeout: float | None,
          interval: float, as_json: bool) -> None:
    """Follow an attempt's events as they are written; stop when it ends or on Ctrl-C.

    Prints the events already written, then each new one as it arrives (one
    timeline line each; with --json one JSON object per line), until the
    attempt's result.json appears.

    \b
    Example:
      parallel-harness sessions watch fix-parser
    """
    import orjson

    from harness.views import attempts

    _, ((n, d),) = pick_attempts(ctx, item_id, attempt, every=False)
    transcript = None  # made at the first line, when the stream file exists

    def emit(raw: bytes) -> None:
        nonlocal transcript
        if transcript is None:
            transcript = attempts.new_transcript(attempts.stream_file(d))
        rec = transcript.feed(raw)
        if rec is None:
            return
        if as_json:
            out = dict(rec)
            if rec["type"] not in ("non-json", "stdout"):
                out["event"] = transcript.events[-1] if transcript.events else None
            click.echo(orjson.dumps(out, default=str).decode())
        else:
            click.echo(_timeline_line(rec))

    if not as_json:
        ended = (d / "result.json").exists()
        click.echo(f"watching {item_id} attempt {n} ({d})"
                   + (": already ended" if ended else "; Ctrl-C to stop"), err=True)
    how = attempts.follow(d, attempts.stream_file, emit, timeout=timeout, interval=interval)
    if how == "ended":
        result = attempts.read_json(d / "result.json") or {}
        if as_json:
            click.echo(orjson.dumps({"type": "end", "result": result}, default=str).decode())
        else:
            click.echo(_ended_line(result))
    follow_end(how, item_id, n, timeout)
