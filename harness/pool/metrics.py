"""Prometheus text exposition of the coordinator's counters: ``state/metrics.prom``.

Written by hand, not with prometheus_client: the textfile format is tiny and
stable, and the library would add a dependency for no gain.

The coordinator calls ``write_prometheus(ws.state_dir / METRICS_FILE, m)``
every tick; node_exporter's textfile collector (point
``--collector.textfile.directory`` at ``state/``) or ``parallel-harness
metrics`` read it. ``m`` is a plain dict (keys missing from it render as 0)::

    items              {state: count}   pending, claimed, waiting, done, failed
    attempts           {terminal reason: count}
    workers_alive, workers_desired                      int
    claims_total, completions_total, reclaims_total, restarts_total   int
    tokens_total       {"input", "output", "cache_creation", "cache_read": int}
    cost_usd_total     float
    paused             0 or 1

Counters count since the coordinator started; Prometheus treats the drop to
0 after a restart as a counter reset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

METRICS_FILE: Final = "metrics.prom"
ITEM_STATES: Final = ("pending", "claimed", "waiting", "done", "failed")
TOKEN_KINDS: Final = ("input", "output", "cache_creation", "cache_read")

# (metric name, type, help, key in m, label name or None, labels always present)
_FAMILIES: Final = (
    ("harness_items", "gauge", "Items in each queue state.", "items", "state", ITEM_STATES),
    ("harness_attempts_total", "counter", "Finished attempts by terminal reason.",
     "attempts", "reason", ()),
    ("harness_workers_alive", "gauge", "Worker processes running now.", "workers_alive",
     None, ()),
    ("harness_workers_desired", "gauge", "Worker pool size asked for.", "workers_desired",
     None, ()),
    ("harness_claims_total", "counter", "Items claimed by workers.", "claims_total", None, ()),
    ("harness_completions_total", "counter", "Attempts that moved their item to done.",
     "completions_total", None, ()),
    ("harness_reclaims_total", "counter", "Claims revoked and returned to the queue.",
     "reclaims_total", None, ()),
    ("harness_restarts_total", "counter", "Worker processes restarted after dying.",
     "restarts_total", None, ()),
    ("harness_tokens_total", "counter", "Agent tokens used, by kind.", "tokens_total", "kind",
     TOKEN_KINDS),
    ("harness_cost_usd_total", "counter", "Agent cost reported, in US dollars.",
     "cost_usd_total", None, ()),
    ("harness_paused", "gauge", "1 while the interrupt file stops new claims, else 0.",
     "paused", None, ()),
    ("harness_integration_lag", "gauge", "Done items not yet integrated (merged or on the remote).",
     "integration_lag", None, ()),
    ("harness_push_retries_total", "counter",
     "Integrations tried again because the target branch moved.", "push_retries_total", None, ()),
)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    value = float(value or 0)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _samples(raw: Any, label: str | None, always: Iterable[str]) -> list[tuple[str, Any]]:
    if label is None:
        return [("", raw or 0)]
    values: Mapping[str, Any] = raw or {}
    keys = list(always) + sorted(str(k) for k in values if str(k) not in always)
    return [(f'{{{label}="{_escape_label(k)}"}}', values.get(k, 0)) for k in keys]


def render_prometheus(m: Mapping[str, Any]) -> str:
    """The text exposition format (version 0.0.4) of the metrics dict ``m``."""
    lines = []
    for name, kind, help_text, key, label, always in _FAMILIES:
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in _samples(m.get(key), label, always):
            lines.append(f"{name}{labels} {_number(value)}")
    return "\n".join(lines) + "\n"


def write_prometheus(path: Path, m: Mapping[str, Any]) -> None:
    """Write ``render_prometheus(m)`` to ``path`` atomically (temp file beside it, rename).

    The temp name starts with a dot and does not end in ``.prom``, so the
    textfile collector never reads a half-written file.
    """
    from harness.queue.fsops import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_prometheus(m).encode(), tmp_dir=path.parent, durable=False)
