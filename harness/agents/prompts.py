"""Prompt templates: ``{{VARIABLE}}`` substitution with no silent blanks.

Variables: SESSION_ID, ITERATION (the attempt number), WORK_ITEM (the id),
RIG, TITLE, PROMPT, TYPE, PRIORITY, WORKER, and ``meta.KEY`` for every key
of the item's ``meta`` (e.g. ``{{meta.ticket}}``). A variable that cannot be
filled is an error (PromptError names the template and the variable): a
misspelt built-in at run start (:func:`check_static`), a ``meta.KEY`` the
item lacks at enqueue (:func:`check`); never an empty string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

VARIABLE: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
BUILTIN: Final = frozenset({"SESSION_ID", "ITERATION", "WORK_ITEM", "RIG", "TITLE", "PROMPT",
                            "TYPE", "PRIORITY", "WORKER"})

DEFAULT_BOOTSTRAP: Final = """\
You are one of several coding agents working in parallel on this repository.
Each agent has its own git worktree and branch; you are in yours.

Work item: {{WORK_ITEM}} (attempt {{ITERATION}}, session {{SESSION_ID}})
Title: {{TITLE}}
Rig: {{RIG}}

{{PROMPT}}

Rules:
- Change only what the work item needs. Commit your work on the current branch
  with a clear message; uncommitted changes are committed for you at the end.
- Do not push, do not switch branches, do not touch other worktrees.
- If you cannot finish, say why in your final message.
"""


class PromptError(ValueError):
    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"{source}: {reason}")


def variables_in(template: str) -> set[str]:
    return set(VARIABLE.findall(template))


def _refuse(source: str, unknown: Iterable[str], what: str) -> None:
    unknown = sorted(unknown)
    if unknown:
        raise PromptError(source, f"{what} " + ", ".join("{{%s}}" % v for v in unknown)
                          + f"; known: {', '.join(sorted(BUILTIN))} and meta.KEY for the"
                          " item's meta keys")


def check_static(template: str, source: str) -> None:
    """Run-start check: every variable is a built-in or a ``meta.KEY`` reference."""
    _refuse(source, {v for v in variables_in(template) - BUILTIN if not v.startswith("meta.")},
            "unknown template variable(s)")


def check(template: str, source: str, meta_keys: Iterable[str] = ()) -> None:
    """Raise PromptError if the template uses a variable this item cannot fill."""
    check_static(template, source)
    _refuse(source, variables_in(template) - BUILTIN - {f"meta.{k}" for k in meta_keys},
            "item has no meta key for")


def item_values(item: Any, *, session_id: str, attempt: int, worker: str) -> dict[str, str]:
    """The variables for one attempt of ``item`` (a harness.queue.item.Item)."""
    values = {f"meta.{k}": str(v) for k, v in item.meta.items()}
    values.update({
        "SESSION_ID": session_id, "ITERATION": str(attempt), "WORK_ITEM": item.id or "",
        "RIG": item.rig, "TITLE": item.title, "PROMPT": item.prompt or item.title,
        "TYPE": item.type, "PRIORITY": str(item.priority), "WORKER": worker,
    })
    return values


def render(template: str, source: str, values: Mapping[str, str]) -> str:
    _refuse(source, variables_in(template) - values.keys(), "no value for")
    return VARIABLE.sub(lambda m: values[m.group(1)], template)


def load_template(path: Path) -> str:
    """The template text; PromptError (naming the path) if it is missing or unreadable."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise PromptError(str(path), "prompt template not found (`parallel-harness init`"
                          " writes one; [paths] bootstrap points elsewhere)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(str(path), f"cannot read prompt template: {exc}") from None
