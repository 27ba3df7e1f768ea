"""``status --watch`` and the demo's live view: redraw the status snapshot.

On a terminal, rich redraws one table in place; otherwise (a pipe, a log
file) the plain text view is printed again whenever it changes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from harness.status import collect, render_text
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
        parts.append(Text("PAUSED " + snapshot["paused"].replace("\n", " | "), style="bold yellow"))
    workers = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("worker", "alive", "state", "item", "try", "hb age", "tokens", "doing"):
        workers.add_column(col, no_wrap=True)
    for w in snapshot["workers"]:
        workers.add_row(w["worker"], "yes" if w["alive"] else "[red]NO[/]", w["state"] or "-",
                        w["item"] or "-", str(w["attempt"] or "-"), f"{w['heartbeat_age']}s",
                        str(w.get("tokens") or "-"), (w["doing"] or "")[:50])
    parts.append(workers)
    for f in snapshot["recent_failures"]:
        parts.append(Text(f"failed {f['item']}: {f['reason'][:100]}", style="red"))
    return Group(*parts)


def watch(ws: Workspace, interval: float, until: Callable[[], bool] = lambda: False,
          timeout: float | None = None) -> None:
    """Redraw until ``until()`` is true, ``timeout`` passes, or Ctrl-C."""
    deadline = None if timeout is None else time.monotonic() + timeout
    done = lambda: until() or (deadline is not None and time.monotonic() > deadline)  # noqa: E731
    try:
        if sys.stdout.isatty():
            from rich.live import Live

            with Live(table(collect(ws)), refresh_per_second=4, screen=False) as live:
                while not done():
                    time.sleep(interval)
                    live.update(table(collect(ws)))
        else:
            last = ""
            while True:
                view = render_text(collect(ws))
                if view != last:
                    print(view + "\n", flush=True)
                    last = view
                if done():
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
