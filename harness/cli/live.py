"""``status --watch`` and the demo's live view: redraw the status snapshot.

On a terminal, rich redraws one table in place. Otherwise (a pipe, a log
file, CI) it prints one timestamped line whenever the queue counts, a worker's
item or the pause state change, and each new failure once: heartbeat ages and
agent activity change every tick and would flood a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from harness.cli.render import clip, paused_text
from harness.queue import names
from harness.views.status import collect
from harness.workspace import Workspace


def table(snapshot: dict[str, Any]):  # -> rich renderable
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    c = snapshot["counts"]
    head = Text.assemble(("queue  ", "bold"), f"pending {c['pending']}  ",
                         (f"claimed {c['claimed']}  ", "cyan"), f"waiting {c['waiting']}  ",
                         (f"done {c['done']}  ", "green"), (f"failed {c['failed']}", "red"))
    parts: list[Any] = [head]
    run = snapshot.get("run")
    if run:
        tokens = sum((run.get("tokens_total") or {}).values())
        parts.append(Text(f"run    {run.get('throughput_per_min') or 0}/min  tokens {tokens}"
                          f"  cost ${run.get('cost_usd_total') or 0:.2f}"))
    if snapshot.get("paused"):
        parts.append(Text("PAUSED " + paused_text(snapshot), style="bold yellow"))
    for c in snapshot.get("corrupt_heartbeats") or []:
        parts.append(Text(f"CORRUPT {c['path']}: {c['error']}", style="bold red"))
    workers = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("worker", "alive", "state", "item", "try", "hb age", "tokens", "doing"):
        workers.add_column(col, no_wrap=True)
    for w in snapshot["workers"]:
        workers.add_row(w["worker"], "yes" if w["alive"] else "[red]NO[/]", w["state"] or "-",
                        w["item"] or "-", str(w["attempt"] or "-"), f"{w['heartbeat_age']}s",
                        str(w.get("tokens") or "-"), (w["doing"] or "")[:50])
    parts.append(workers)
    for f in snapshot["recent_failures"]:
        parts.append(Text(f"failed {f['item']}: {clip(f['reason'], 160)}", style="red"))
    return Group(*parts)


def watch(ws: Workspace, interval: float, until: Callable[[], bool] = lambda: False,
          timeout: float | None = None, as_json: bool = False) -> None:
    """Redraw until ``until()`` is true, ``timeout`` passes, or Ctrl-C.

    ``as_json``: one JSON line (the ``status --json`` snapshot, with ``ts``) per
    change, on a terminal too: a program reads it.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    done = lambda: until() or (deadline is not None and time.monotonic() > deadline)  # noqa: E731
    try:
        if sys.stdout.isatty() and not as_json:
            from rich.live import Live

            with Live(table(collect(ws)), refresh_per_second=4, screen=False) as live:
                while not done():
                    time.sleep(interval)
                    live.update(table(collect(ws)))
        else:
            _print_changes(ws, interval, done, as_json)
    except KeyboardInterrupt:
        pass


def _print_changes(ws: Workspace, interval: float, done: Callable[[], bool],
                   as_json: bool) -> None:
    """A line per change of the progress line, and each new failure once."""
    import orjson

    last, failures_seen = "", set()
    while True:
        snapshot = collect(ws)
        line = progress_line(snapshot)
        if line != last:
            print(orjson.dumps({"ts": round(time.time(), 3), **snapshot}).decode() if as_json
                  else time.strftime("%H:%M:%S ") + line, flush=True)
            last = line
        for f in snapshot["recent_failures"]:
            if (f["item"], f["reason"]) not in failures_seen:
                failures_seen.add((f["item"], f["reason"]))
                if not as_json:  # a JSON line carries recent_failures already
                    print(f"{time.strftime('%H:%M:%S')} failed {f['item']}: {f['reason']}",
                          flush=True)
        if done():
            break
        time.sleep(interval)


def progress_line(snapshot: dict[str, Any]) -> str:
    """Counts, each worker's item and attempt (``-`` idle, ``DEAD``), and the pause reason."""
    c = snapshot["counts"]
    parts = ["  ".join(f"{state} {c[state]}" for state in names.STATES)]
    if snapshot["workers"]:
        parts.append("  ".join(
            f"{w['worker']} " + ("DEAD" if not w["alive"] else
                                 f"{w['item']}~{w['attempt']}" if w["item"] else "-")
            for w in snapshot["workers"]))
    if snapshot["paused"]:
        parts.append("PAUSED " + paused_text(snapshot))
    parts += [f"CORRUPT {c['path']}" for c in snapshot.get("corrupt_heartbeats") or []]
    return "  |  ".join(parts)
