"""Turning operator input into queue items: JSON, JSON lists, JSONL, the legacy queue.json.

``read`` streams the items of one input: a JSON object, a JSON list (the old
harness's ``state/queue.json``, ``[{"id","type","title","priority","rig"}]``, is
such a list), or JSON Lines, read a line at a time so a million-line file costs
no more memory than one line. ``stream`` enqueues items as they come, through one
bulk batch (harness.queue.bulk), and reports each addition and refusal through
callbacks; ``submit`` is the same for a list, with a Report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from harness.agents import prompts
from harness.queue.bulk import Batch
from harness.queue.core import DuplicateId, Queue, UnknownDependency
from harness.queue.item import InvalidItem, Item, validate
from harness.queue.names import ItemName

Row = tuple[str, Any]  # (where the item came from, its JSON value)


class InputError(ValueError):
    """The input text is not JSON or JSON Lines; names the source and line."""


def read(f: IO[bytes], source: str) -> Iterator[Row]:
    """The items of one input, each with where it came from (``source``, or ``source:N``
    when the input holds more than one: the line of JSON Lines, the place in a list).

    A line that is not JSON raises InputError naming it, when it is reached: items
    before it have been yielded. A first line that does not parse alone is taken as
    the start of one (pretty-printed) JSON value, which is then read whole.
    """
    first = _first_line(f)
    if first is None:
        return
    if first.lstrip().startswith(b"["):
        yield from _labelled(_whole(first + f.read(), source), source)
        return
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError:
        yield from _labelled(_whole(first + f.read(), source), source)
        return
    yield from _labelled(_lines(head, f, source), source)


def _first_line(f: IO[bytes]) -> bytes | None:
    for line in f:
        if line.strip():
            return line
    return None


def _whole(text: bytes, source: str) -> Iterator[Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{source}:1: neither JSON nor JSON Lines: {exc}") from None
    yield from data if isinstance(data, list) else [data]


def _lines(head: Any, f: IO[bytes], source: str) -> Iterator[Any]:
    yield head
    lineno = 1
    for lineno, line in enumerate(f, lineno + 1):
        if line.strip():
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{source}:{lineno}: neither JSON nor JSON Lines: {exc}") from None


def _labelled(items: Iterator[Any], source: str) -> Iterator[Row]:
    """``source:N`` for the N-th of several items, plain ``source`` for a lone one (one
    item of look-ahead)."""
    first = next(items, _END)
    second = next(items, _END)
    if second is _END:
        if first is not _END:
            yield source, first
        return
    yield f"{source}:1", first
    yield f"{source}:2", second
    for n, item in enumerate(items, 3):
        yield f"{source}:{n}", item


_END = object()


@dataclass
class Report:
    added: list[ItemName] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (where, why)


def submit(queue: Queue, raw: Sequence[Any], *, atomic: bool = False,
           template: tuple[str, str] | None = None, sources: Sequence[str] = ()) -> Report:
    """Enqueue ``raw`` items (``sources[i]`` names where item i came from); see stream."""
    report = Report()
    rows = ((sources[i] if i < len(sources) else f"item #{i}", d) for i, d in enumerate(raw))
    stream(queue, rows, atomic=atomic, template=template, on_added=report.added.append,
           on_refused=lambda where, why: report.refused.append((where, why)))
    return report


def stream(queue: Queue, rows: Iterable[Row], *, atomic: bool = False,
           template: tuple[str, str] | None = None,
           on_added: Callable[[ItemName], None] = lambda name: None,
           on_refused: Callable[[str, str], None] = lambda where, why: None) -> int:
    """Enqueue items as they come; return how many were refused.

    Each is validated (and checked against ``template``, the prompt template's
    (text, path), for the meta keys it uses); one without an id gets one made from
    its title (:func:`slug_id`). An item whose dependency is not in the queue yet is
    kept back and tried again once the input is over (dependencies may come later in
    the input; only such items are held in memory). With ``atomic`` nothing is added
    unless every item is valid and its id free: all are staged and reserved, then
    published together (harness.queue.bulk); after the first refusal the rest are only
    validated, so every refusal is reported. ``on_added`` hears each published name
    (atomic: after the commit, in no particular order).
    """
    refused = 0

    def refuse(where: str, exc: Exception) -> None:
        nonlocal refused
        refused += 1
        on_refused(where, _why(exc))

    with queue.batch(atomic=atomic) as batch:
        staging = True
        later: list[tuple[str, Item]] = []
        for where, data in rows:
            if isinstance(data, dict) and data.get("id"):
                where = f"{where} ({data['id']})"
            try:
                item = _checked(queue, where, data, template)
                if staging:
                    _add(queue, batch, where, item, later, on_added, atomic)
            except (InvalidItem, DuplicateId, prompts.PromptError) as exc:
                refuse(where, exc)
                staging = not atomic
        while staging and later:
            waiting, later = later, []
            for where, item in waiting:
                try:
                    _add(queue, batch, where, item, later, on_added, atomic)
                except (InvalidItem, DuplicateId) as exc:
                    refuse(where, exc)
                    staging = not atomic
            if len(later) == len(waiting):
                break  # no progress: unknown ids, or a cycle among them
        for where, item in later:
            refuse(where, _unknown_dependency(queue, where, item))
        if atomic and not refused:
            batch.commit(on_published=on_added)
    return refused


def _checked(queue: Queue, where: str, data: Any, template: tuple[str, str] | None) -> Item:
    item = validate(data, where)
    if item.id is None and item.title.strip():
        item = item.model_copy(update={"id": slug_id(queue, item.title)})
    if template is not None:
        prompts.check(template[0], template[1], item.meta.keys())
    return item


def _add(queue: Queue, batch: Batch, where: str, item: Item,
         later: list[tuple[str, Item]], on_added: Callable[[ItemName], None],
         atomic: bool) -> None:
    """Stage (and, not atomic, publish) one item; keep it for later if a dependency is
    not in the queue yet. DuplicateId if its id is taken (in the queue or this batch)."""
    try:
        name, doc = queue.prepare(item, where)
    except UnknownDependency:
        later.append((where, item))
        return
    try:
        batch.add(name, doc)
    except FileExistsError:
        raise DuplicateId(queue.root / "ids" / name.id,
                          f"id {name.id!r} is already in the queue"
                          f" (`parallel-harness show {name.id}`); give another id") from None
    if not atomic:
        on_added(name)


def _unknown_dependency(queue: Queue, where: str, item: Item) -> Exception:
    try:
        queue.prepare(item, where)
    except InvalidItem as exc:
        return exc
    return InvalidItem(where, "depends_on forms a cycle")


def slug_id(queue: Queue, title: str) -> str:
    """An id made from a title, ``-2``, ``-3``... appended while it is taken."""
    from harness.cli.promptfile import slug

    base = slug(title)[:120]
    candidate, n = base, 1
    while (queue.root / "ids" / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _why(exc: Exception) -> str:
    """The reason without the source prefix (the report names the item already)."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, prompts.PromptError):
        return str(exc)  # its source is the template file, which the reason needs
    return str(reason) if reason else str(exc)
