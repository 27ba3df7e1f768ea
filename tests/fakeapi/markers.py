"""Behaviour markers: ``[[fake:NAME key=value ...]]`` inside prompt text.

Contract: :func:`find_markers` returns every well-formed marker in a text, in
order. A marker is ``[[fake:`` + a name of ``[a-z0-9_]`` + optional
whitespace-separated ``key=value`` parameters (values may be double-quoted to
hold spaces; ``\\"`` escapes a quote) + ``]]``. Text that merely resembles a
marker is ignored, never an error.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

_MARKER = re.compile(
    r"\[\[fake:([a-z0-9_]+)((?:\s+[A-Za-z0-9_]+=(?:\"(?:[^\"\\]|\\.)*\"|[^\s\]]*))*)\s*\]\]"
)


@dataclass(frozen=True)
class Marker:
    """One parsed marker. ``raw`` is the exact matched text (used as a stable key)."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    raw: str = ""

    def get_int(self, key: str, default: int) -> int:
        """Parameter ``key`` as an int; ``default`` when absent or not a number."""
        try:
            return int(self.params[key])
        except (KeyError, ValueError):
            return default

    def get_float(self, key: str, default: float) -> float:
        """Parameter ``key`` as a float; ``default`` when absent or not a number."""
        try:
            return float(self.params[key])
        except (KeyError, ValueError):
            return default

    def get_str(self, key: str, default: str) -> str:
        """Parameter ``key`` as text; ``default`` when absent."""
        return self.params.get(key, default)


def _parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for token in shlex.split(text):
        key, _, value = token.partition("=")
        params[key] = value
    return params


def find_markers(text: str) -> list[Marker]:
    """All markers in ``text`` in order of appearance."""
    found = []
    for m in _MARKER.finditer(text):
        try:
            params = _parse_params(m.group(2))
        except ValueError:
            continue
        found.append(Marker(m.group(1), params, m.group(0)))
    return found


def last_marker(texts: list[str]) -> Marker | None:
    """The last marker across ``texts`` (later texts win), or None."""
    for text in reversed(texts):
        markers = find_markers(text)
        if markers:
            return markers[-1]
    return None
