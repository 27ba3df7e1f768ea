"""The environment every git subprocess of the harness runs with (one place).

A fixed identity, so commits and merges work on machines with no
``user.name``/``user.email``; C locale, so messages can be parsed; no
inherited variable that would point git at another repository or index (the
harness may itself run from a git hook); never a terminal prompt.
"""

from __future__ import annotations

import os
from typing import Final

IDENTITY: Final = {
    "GIT_AUTHOR_NAME": "parallel-harness",
    "GIT_AUTHOR_EMAIL": "parallel-harness@localhost",
    "GIT_COMMITTER_NAME": "parallel-harness",
    "GIT_COMMITTER_EMAIL": "parallel-harness@localhost",
}
REPO_LOCATION_VARS: Final = frozenset({
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_CEILING_DIRECTORIES"})


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in REPO_LOCATION_VARS and k != "LANGUAGE"}
    env.update(IDENTITY)
    env["LC_ALL"] = "C"
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.update(extra or {})
    return env
