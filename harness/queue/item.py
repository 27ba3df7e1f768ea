"""The work item document and its validation.

An item file is small immutable JSON. Once published it is never rewritten:
every queue name of the item is a hard link to the same inode, so the file
read from any state is the one that was enqueued.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.queue import names


class InvalidItem(ValueError):
    """An item document failed validation; ``source`` names where it came from."""

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"{source}: {reason}")


class Item(BaseModel):
    """One unit of work. ``id`` is assigned at enqueue when missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    title: str = ""
    type: str = "task"
    priority: int = names.DEFAULT_PRIORITY
    rig: str = ""
    prompt: str | None = None
    command: list[str] | str | None = None
    depends_on: list[str] = Field(default_factory=list)
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    meta: dict[str, Any] = Field(default_factory=dict)
    enqueued_at: float | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        return None if value is None else names.validate_id(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _check_priority(cls, value: Any) -> int:
        return names.priority_value(value)

    @field_validator("depends_on")
    @classmethod
    def _check_deps(cls, value: list[str]) -> list[str]:
        return [names.validate_id(v) for v in value]

    def stamped(self) -> Item:
        """This item with an id and an enqueue time (what gets written to disk)."""
        return self.model_copy(update={
            "id": self.id or names.new_id(),
            "enqueued_at": self.enqueued_at or time.time(),
        })

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True), option=orjson.OPT_SORT_KEYS)


def validate(data: Item | dict[str, Any], source: str = "item") -> Item:
    """Validate a mapping as an Item; raise InvalidItem naming the field at fault."""
    if isinstance(data, Item):
        return data
    if not isinstance(data, dict):
        raise InvalidItem(source, f"expected a JSON object, got {type(data).__name__}")
    try:
        return Item.model_validate(data)
    except ValidationError as exc:
        raise InvalidItem(source, _describe(exc)) from None


def _refuse_nul(doc: dict[str, Any], source: str) -> None:
    """InvalidItem naming the field if a NUL byte is anywhere in the document: no program
    argument, environment variable or C string can carry one, so an agent could never
    start for it. Checked at enqueue, not on the claim path."""
    for key, value in doc.items():
        if _has_nul(value):
            raise InvalidItem(source, f"field {key!r}: contains a NUL byte (\\x00), which no"
                                      " program argument, environment variable or prompt"
                                      " option can carry; remove it")


def document(item: Item, source: str) -> tuple[str, bytes]:
    """(id, file bytes) of ``item`` as enqueued: refused if it holds a NUL byte, stamped
    with an id and an enqueue time when it has none (as :meth:`Item.stamped`).

    One dump of the model serves the NUL check and the bytes: the bulk enqueue's cost
    per item was three model traversals (check, stamp, dump) before. The NUL check
    screens the bytes first (one ``in``) and walks the fields only on a hit.
    """
    doc = item.model_dump(exclude_none=True)
    doc["id"] = item.id or names.new_id()
    doc["enqueued_at"] = item.enqueued_at or time.time()
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    # JSON spells a NUL in any string (key or value) as \u0000, so bytes without that
    # text hold none: the walk over every field, which names the one at fault, runs
    # only for the few documents that may have one (an escaped backslash before
    # "u0000" also matches; the walk then finds nothing).
    if b"\\u0000" in data:
        _refuse_nul(doc, source)
    return doc["id"], data


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def load(raw: bytes, source: str) -> Item:
    """Parse and validate an item file's bytes; raise InvalidItem with the reason."""
    if not raw.strip():
        raise InvalidItem(source, "empty file")
    try:
        return Item.model_validate_json(raw)  # one pass in pydantic-core: the claim's hot path
    except ValidationError:
        pass  # rare: take the slow path below for a precise message
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidItem(source, f"malformed JSON: {exc}") from None
    return validate(data, source)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(item)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"field {field!r}: {msg}")
    return "; ".join(parts)
