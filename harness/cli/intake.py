"""Turning operator input into queue items: JSON, JSON lists, JSONL, the legacy queue.json.

``parse`` accepts a JSON object, a JSON list (the old harness's
``state/queue.json``, ``[{"id","type","title","priority","rig"}]``, is such a
list), or JSON Lines. ``submit`` enqueues a batch in dependency order and
reports, per input item, what was added and what was refused and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from harness.agents import prompts
from harness.queue.item import InvalidItem, Item, validate
from harness.queue.names import ItemName
from harness.queue.core import DuplicateId, Queue


class InputError(ValueError):
    """The input text is not JSON or JSON Lines; names the source and line."""


def parse(text: str, source: str) -> list[Any]:
    """The items in ``text``: one object, a list of objects, or one object per line."""
    text = text.strip()
    if not text:
        return []
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = None
    else:
        return data if isinstance(data, list) else [data]
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{source}:{lineno}: neither JSON nor JSON Lines: {exc}") from None
    return items


@dataclass
class Report:
    added: list[ItemName] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (where, why)


def _dependency_order(items: list[Item]) -> list[int]:
    """Indexes with every in-batch dependency before its dependant (input order otherwise)."""
    by_id = {it.id: i for i, it in enumerate(items) if it.id}
    order: list[int] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(i: int) -> None:
        if state.get(i) == 2:
            return
        if state.get(i) == 1:
            raise InvalidItem(f"item #{i}", "depends_on forms a cycle")
        state[i] = 1
        for dep in items[i].depends_on:
            if dep in by_id:
                visit(by_id[dep])
        state[i] = 2
        order.append(i)

    for i in range(len(items)):
        visit(i)
    return order


def validate_batch(queue: Queue, raw: Sequence[Any], template: tuple[str, str] | None,
                   sources: Sequence[str] = ()) -> tuple[list[Item | None], Report]:
    """Validate every item; refusals go in the report, valid ones are returned by index.

    ``sources[i]`` names where item i came from (a file, file:line); an item
    without an id gets one made from its title (see :func:`slug_id`).
    """
    report = Report()
    items: list[Item | None] = []
    seen: set[str] = set()
    for i, data in enumerate(raw):
        label = sources[i] if i < len(sources) else f"item #{i}"
        where = label + (f" ({data.get('id')})" if isinstance(data, dict) and
                         data.get("id") else "")
        try:
            item = validate(data, where)
            if item.id is None and item.title.strip():
                item = item.model_copy(update={"id": slug_id(queue, item.title, seen)})
            if item.id and (item.id in seen or (queue.root / "ids" / item.id).exists()):
                raise DuplicateId(queue.root / "ids" / item.id,
                                  f"id {item.id!r} is already in the queue"
                                  f" (`parallel-harness show {item.id}`); give another id")
            if template is not None:
                prompts.check(template[0], template[1], item.meta.keys())
            seen.add(item.id or "")
            items.append(item)
        except (InvalidItem, DuplicateId, prompts.PromptError) as exc:
            report.refused.append((where, _why(exc)))
            items.append(None)
    return items, report


def slug_id(queue: Queue, title: str, taken: set[str]) -> str:
    """An id made from a title, ``-2``, ``-3``... appended while it is taken."""
    from harness.cli.promptfile import slug

    base = slug(title)[:120]
    candidate, n = base, 1
    while candidate in taken or (queue.root / "ids" / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def submit(queue: Queue, raw: Sequence[Any], *, atomic: bool = False,
           template: tuple[str, str] | None = None, sources: Sequence[str] = ()) -> Report:
    """Enqueue ``raw`` items; with ``atomic`` nothing is added unless every item is valid.

    ``template`` is (text, path) of the prompt template, checked against each
    item's meta keys. Atomicity covers validation: an id taken by a concurrent
    enqueuer between validation and publishing is still refused (reported).
    """
    items, report = validate_batch(queue, raw, template, sources)
    if atomic and report.refused:
        return report
    valid = [it for it in items if it is not None]
    try:
        order = _dependency_order(valid)
    except InvalidItem as exc:
        report.refused.append((exc.source, exc.reason))
        return report
    for i in order:
        try:
            report.added.append(queue.enqueue(valid[i], source=f"item {valid[i].id or i}"))
        except (InvalidItem, DuplicateId) as exc:
            report.refused.append((f"item {valid[i].id or i}", _why(exc)))
    return report


def _why(exc: Exception) -> str:
    """The reason without the source prefix (the report names the item already)."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, prompts.PromptError):
        return str(exc)  # its source is the template file, which the reason needs
    return str(reason) if reason else str(exc)
