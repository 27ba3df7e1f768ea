"""The queue invariants as code, shared by the tests and ``fsck``.

``check()`` lists one directory at a time, so run it on a quiescent queue (or
after ``recover()``): an item that moves while it runs may be reported with two
names or none.

With a history from the caller (the ids it enqueued, the attempts it saw
revoked), it also gives the Jepsen "total queue" verdict: lost, unexpected,
and revoked attempts that completed anyway.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.queue import fsops, names
from harness.queue.names import ItemName

LIVE = ("pending", "claimed", "waiting")
TERMINAL = ("done", "failed")


@dataclass(frozen=True)
class Violation:
    code: str
    item: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.item}: {self.detail}"


def check(root: Path, *, enqueued: Iterable[str] | None = None,
          revoked: Iterable[tuple[str, int]] = (), expect_finished: bool = False
          ) -> list[Violation]:
    """Every violation of the queue invariants in ``root`` (a queue/ directory).

    ``enqueued``: ids the caller enqueued; any other id found is unexpected.
    ``expect_finished``: every enqueued id must be in done/ or failed/.
    ``revoked``: (id, attempt) pairs that were revoked; none may be in done/.
    """
    root = Path(root)
    out: list[Violation] = []
    held = _collect(root, out)
    for item_id, places in held.items():
        out.extend(_check_item(root, item_id, places))
    reserved = {e for e in os.listdir(root / "ids") if not e.startswith(".")}
    for item_id in reserved - held.keys():
        out.append(Violation("lost", item_id, "reserved in ids/ but has no queue name"))
    for item_id in held.keys() - reserved:
        out.append(Violation("unregistered", item_id, "has a queue name but no ids/ entry"))
    for entry in os.listdir(root / "tmp"):
        if not entry.startswith("."):
            out.append(Violation("unfinished-enqueue", entry, "staged in tmp/ (recover finishes it)"))
    out.extend(_check_history(held, enqueued, set(revoked), expect_finished))
    return out


def _collect(root: Path, out: list[Violation]) -> dict[str, list[tuple[str, ItemName]]]:
    held: dict[str, list[tuple[str, ItemName]]] = defaultdict(list)
    for state in (*LIVE, *TERMINAL):
        present = {e.name: e for e in os.scandir(root / state)}  # d_type: no stat per entry
        for entry, dirent in present.items():
            if not names.is_entry(entry):
                continue
            if not dirent.is_file(follow_symlinks=False):
                out.append(_junk(root / state / entry))
                continue
            parsed = names.try_parse(entry)
            if parsed is not None:
                held[parsed.id].append((state, parsed))
            elif state != "failed" or entry + names.REASON_SUFFIX not in present:
                out.append(Violation("foreign", f"{state}/{entry}", "not a queue name"))
            if state == "failed" and entry + names.REASON_SUFFIX not in present:
                out.append(Violation("no-reason", f"failed/{entry}", "dead letter without reason"))
    for d in ("ids", "tmp"):
        out.extend(_junk(root / d / e.name) for e in os.scandir(root / d)
                   if not e.name.startswith(".") and not e.is_file(follow_symlinks=False))
    return held


def _junk(path: Path) -> Violation:
    try:
        kind = fsops.kind_of(os.lstat(path).st_mode)
    except FileNotFoundError:
        kind = "gone"
    return Violation("junk", f"{path.parent.name}/{path.name}",
                     f"not a regular file ({kind}); `parallel-harness fsck --repair` moves it"
                     " to queue/junk/")


def junk_count(root: Path) -> int:
    """Entries moved aside into ``root/junk/`` (their .reason files not counted)."""
    try:
        return sum(1 for e in os.listdir(Path(root) / "junk") if names.is_entry(e))
    except FileNotFoundError:
        return 0


def _check_item(root: Path, item_id: str, places: list[tuple[str, ItemName]]
                ) -> list[Violation]:
    out = []
    live = [f"{s}/{n}" for s, n in places if s in LIVE]
    terminal = [f"{s}/{n}" for s, n in places if s in TERMINAL]
    if len(live) > 1:
        out.append(Violation("two-live-names", item_id, ", ".join(sorted(live))))
    if terminal and live:
        out.append(Violation("terminal-and-live", item_id, ", ".join(sorted(terminal + live))))
    if len(terminal) > 1:
        out.append(Violation("multiple-terminal", item_id, ", ".join(sorted(terminal))))
    for state, name in places:
        if not fsops.same_file(root / state / str(name), root / "ids" / item_id):
            out.append(Violation("not-same-item", item_id,
                                 f"{state}/{name} is not a link to ids/{item_id}"))
        if state in ("pending", "claimed", "done", "failed") and name.due is not None:
            out.append(Violation("due-outside-waiting", item_id, f"{state}/{name}"))
    return out


def _check_history(held: dict[str, list[tuple[str, ItemName]]], enqueued: Iterable[str] | None,
                   revoked: set[tuple[str, int]], expect_finished: bool) -> list[Violation]:
    out = []
    for item_id, places in held.items():
        for state, name in places:
            if state == "done" and (item_id, name.attempt) in revoked:
                out.append(Violation("revoked-completed", item_id,
                                     f"attempt {name.attempt} was revoked but is in done/"))
    if enqueued is None:
        return out
    wanted = set(enqueued)
    for item_id in held.keys() - wanted:
        out.append(Violation("unexpected", item_id, "in the queue but never enqueued"))
    for item_id in wanted - held.keys():
        out.append(Violation("lost", item_id, "enqueued but has no queue name"))
    if expect_finished:
        for item_id in wanted & held.keys():
            if not any(s in TERMINAL for s, _ in held[item_id]):
                out.append(Violation("unfinished", item_id, "not in done/ or failed/"))
    return out
