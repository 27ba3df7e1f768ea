"""Markdown prompt files as items: ``enqueue tasks/*.md``, ``enqueue --prompt-file``.

A file is one item. Its prompt is the text (front matter removed), its id
the file name without ``.md`` made a slug, its title the first Markdown
heading (else the id). Optional front matter at the very top sets any other
item field (priority, depends_on, meta, rig, max_attempts, even id or title):

- TOML between ``+++`` lines (the full language: tables, arrays, inline tables);
- between ``---`` lines, a deliberately small YAML subset: one ``key: value``
  per line, where a value that parses as JSON is taken as JSON
  (``depends_on: ["a", "b"]``, ``meta: {"team": "web"}``), ``[a, b]`` is a
  list of strings, and anything else a string. Nested YAML is not read (no
  YAML parser is a dependency): use TOML for it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import orjson

from harness.queue.names import ID_MAX_LEN

_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_FENCES = {"+++": "toml", "---": "yaml"}


class PromptFileError(ValueError):
    """The front matter cannot be read; the message names the file and the line."""


def is_prompt_file(path: str) -> bool:
    return path.lower().endswith((".md", ".markdown"))


def slug(text: str) -> str:
    """An item id from free text: lower case, runs of other characters become '-'."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    s = re.sub(r"\.{2,}", ".", s)[:ID_MAX_LEN].rstrip("-._")
    return s.removesuffix(".lock") or "item"


def parse(text: str, source: str) -> dict[str, Any]:
    """The item of one prompt file; raises PromptFileError for bad front matter."""
    fields, body = _front_matter(text, source)
    heading = _HEADING.search(body)
    item: dict[str, Any] = {"id": slug(Path(source).stem), "prompt": body.strip()}
    if heading:
        item["title"] = heading.group(1)
    item.update(fields)
    if not item["prompt"]:
        raise PromptFileError(f"{source}: no prompt text after the front matter")
    return item


def _front_matter(text: str, source: str) -> tuple[dict[str, Any], str]:
    lines = text.splitlines(keepends=True)
    kind = _FENCES.get(lines[0].strip()) if lines else None
    if kind is None:
        return {}, text
    fence = lines[0].strip()
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == fence), None)
    if end is None:
        raise PromptFileError(f"{source}:1: front matter opened with {fence!r} is never closed")
    raw, body = "".join(lines[1:end]), "".join(lines[end + 1:])
    if kind == "toml":
        try:
            return tomllib.loads(raw), body
        except tomllib.TOMLDecodeError as exc:
            raise PromptFileError(f"{source}: front matter is not valid TOML: {exc}") from None
    return _simple_yaml(raw, source), body


def _simple_yaml(raw: str, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lineno, line in enumerate(raw.splitlines(), 2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or line[:1].isspace() or not key.strip():
            raise PromptFileError(
                f"{source}:{lineno}: expected 'key: value' ({line.strip()!r}); front matter"
                " between --- lines is a simple key: value subset, use +++ TOML for more")
        out[key.strip()] = _yaml_value(value.strip())
    return out


def _yaml_value(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    if value.startswith("[") and value.endswith("]"):
        return [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
    return value.strip("'\"")
