"""Integrate a finished branch into the target branch: a merge queue's one step.

Pure git plumbing, no worktree is ever touched:

1. resolve ``refs/heads/<branch>`` once (the commit being integrated) and
   ``refs/heads/<target>`` (the expected old tip);
2. ``branch`` already an ancestor of ``target`` -> ``already_merged``;
   ``target`` an ancestor of ``branch`` -> fast-forward to the branch commit
   (the agent's commits are kept exactly as they are);
   otherwise ``git merge-tree --write-tree`` computes the merged tree in the
   object store (exit 1 = conflict: return the paths, change nothing) and
   ``git commit-tree`` makes a two-parent merge commit (target first);
3. move the target only by compare-and-swap,
   ``git update-ref refs/heads/<target> <new> <old>``. If the target moved
   meanwhile, the CAS fails, the new tip is re-read and the whole computation
   is redone (at most ``max_races`` times); a concurrent move is never
   overwritten.

Nothing here rebases, so no commit is ever dropped (plain ``git rebase``
silently drops commits that look like cherry-picks already upstream; see
research/peers.md).

The target branch checked out in a worktree (typically the operator's main
worktree has ``main`` checked out): moving the ref does not move that
worktree's files or index, so ``git status`` there then shows the merged
changes reversed, as staged differences. Before moving a checked-out target
``integrate`` inspects every such worktree (read-only, without optional
locks) and refuses with a :class:`MergeError` if it holds uncommitted work:
unstaged changes to tracked files, unmerged entries, or an index that is not
exactly the tree of the target or of one of its ancestors. An index that is
merely *behind* (left there by earlier integrations) is not work and does not
block; the result's ``detail`` then gives the command that brings it up to
date without touching local edits (``git read-tree -m -u <index-tree> <tip>``).
The check and the ref move are not atomic with respect to the operator's
editing; it protects against the common case, not against a deliberate race.

Knows nothing of queues, agents or the CLI. Needs git >= 2.38 for
``merge-tree --write-tree`` (fast-forwards and already-merged checks work
with any git).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.paths import user_umask
from harness.repo.gitenv import git_env
from typing import Literal

MergeStatus = Literal["merged", "already_merged", "conflict"]


GIT_TIMEOUT = 120.0
MERGE_TREE_MIN_VERSION = (2, 38)
# How far back the "index is merely behind" check looks for the index's tree.
_BEHIND_SEARCH_LIMIT = 10_000

#: Test seam: called as ``hook(repo, ref, new_sha, old_sha)`` right before the
#: compare-and-swap ``update-ref``. Tests use it to move the target
#: concurrently and deterministically; production code leaves it ``None``.
_before_update_ref: Callable[[Path, str, str, str], None] | None = None


class MergeError(Exception):
    """A real failure (missing branch, corrupt repository, refused move).

    ``command`` is the git argv that failed (empty if the failure was not a
    git command), ``stderr`` git's error output, ``returncode`` its exit code.
    """

    def __init__(self, message: str, *, command: Sequence[str] = (), stderr: str = "",
                 returncode: int | None = None) -> None:
        self.message = message
        self.command = tuple(command)
        self.stderr = stderr
        self.returncode = returncode
        text = message
        if self.command:
            text += f" [{' '.join(self.command)} -> exit {returncode}]"
        if stderr.strip():
            text += f": {stderr.strip()}"
        super().__init__(text)


class MergeRaceError(MergeError):
    """The target kept moving: every compare-and-swap of ``max_races + 1`` lost."""


class TargetDirty(MergeError):
    """The target is checked out in a worktree holding uncommitted work: nothing was moved."""


@dataclass(frozen=True)
class MergeResult:
    status: MergeStatus
    target_sha: str                      # the target's tip afterwards (new or unchanged)
    conflicts: tuple[str, ...] = ()      # conflicting paths (status == "conflict")
    detail: str = ""
    previous_sha: str = ""               # the tip the merge was computed against
    branch_sha: str = ""                 # the commit that was integrated
    fast_forward: bool = False
    races: int = 0                       # compare-and-swaps lost to concurrent moves


# --------------------------------------------------------------------------- git


def _run(repo: Path, *args: str, input: bytes | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = ["git", "-C", str(repo), *args]
    try:
        return subprocess.run(cmd, capture_output=True, input=input, env=env or git_env(),
                              timeout=GIT_TIMEOUT, umask=user_umask())
    except FileNotFoundError as exc:
        raise MergeError("git executable not found", command=cmd) from exc
    except subprocess.TimeoutExpired as exc:
        raise MergeError(f"git timed out after {GIT_TIMEOUT:.0f}s", command=cmd) from exc


def _err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode("utf-8", "replace")


def _fail(message: str, proc: subprocess.CompletedProcess[bytes]) -> MergeError:
    return MergeError(message, command=[str(a) for a in proc.args], stderr=_err(proc),
                      returncode=proc.returncode)


def _ref(name: str) -> str:
    return name if name.startswith("refs/") else f"refs/heads/{name}"


def _short(name: str) -> str:
    return name.removeprefix("refs/heads/")


def _resolve(repo: Path, ref: str, what: str) -> str:
    """Full commit id of ``ref``; :class:`MergeError` naming ``what`` if absent."""
    proc = _run(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if proc.returncode != 0:
        if not repo.exists():
            raise _fail(f"repository {repo} does not exist", proc)
        check = _run(repo, "rev-parse", "--git-dir")
        if check.returncode != 0:
            raise _fail(f"{repo} is not a usable git repository", check)
        raise _fail(f"{what} does not exist ({ref} is not a commit)", proc)
    return proc.stdout.decode().strip()


def _is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    proc = _run(repo, "merge-base", "--is-ancestor", ancestor, descendant)
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    raise _fail(f"cannot tell whether {ancestor} is an ancestor of {descendant}", proc)


# ------------------------------------------------------------------------ public


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    """True when commit ``ancestor`` is in the history of ``descendant``."""
    return _is_ancestor(Path(repo), ancestor, descendant)


def is_merged(repo: Path, target: str, branch: str) -> bool:
    """True when every commit of ``branch`` is already in ``target``."""
    repo = Path(repo)
    branch_sha = _resolve(repo, _ref(branch), f"branch {branch!r}")
    target_sha = _resolve(repo, _ref(target), f"target branch {target!r}")
    return _is_ancestor(repo, branch_sha, target_sha)


def git_version(repo: Path | None = None) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of the git on PATH, or None if unusable."""
    try:
        proc = subprocess.run(["git", "version"], capture_output=True, env=git_env(),
                              cwd=str(repo) if repo is not None and Path(repo).is_dir() else None,
                              timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(rb"(\d+)\.(\d+)(?:\.(\d+))?", proc.stdout)
    if proc.returncode != 0 or not m:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def git_supports_merge_tree(repo: Path | None = None) -> bool:
    """Whether git has ``merge-tree --write-tree`` (>= 2.38), for ``doctor``."""
    version = git_version(repo)
    return version is not None and version[:2] >= MERGE_TREE_MIN_VERSION


def integrate(repo: Path, target: str, branch: str, *, message: str | None = None,
              max_races: int = 5) -> MergeResult:
    """Merge ``branch`` into ``target`` without touching any worktree.

    Returns ``merged`` (fast-forward or merge commit), ``already_merged`` or
    ``conflict`` (nothing changed, the branch is kept, ``conflicts`` lists the
    paths). Raises :class:`MergeError` for real failures (missing branch,
    unrelated histories, broken repository, target checked out with
    uncommitted work) and :class:`MergeRaceError` if the target moved
    concurrently more than ``max_races`` times in a row.
    """
    if max_races < 0:
        raise ValueError("max_races must be >= 0")
    repo = Path(repo)
    target_ref, branch_ref = _ref(target), _ref(branch)
    if target_ref == branch_ref:
        raise MergeError(f"cannot integrate {branch!r} into itself")
    # The commit to integrate is fixed once: later commits on the branch are
    # not part of this integration.
    branch_sha = _resolve(repo, branch_ref, f"branch {branch!r}")
    if message is None:
        message = f"Merge branch '{_short(branch)}' into {_short(target)}"
    races = 0
    last_cas_error = ""
    while True:
        old = _resolve(repo, target_ref, f"target branch {target!r}")

        def result(status: MergeStatus, sha: str, detail: str, conflicts: tuple[str, ...] = (),
                   fast_forward: bool = False) -> MergeResult:
            return MergeResult(status, sha, conflicts, detail, previous_sha=old,  # noqa: B023
                               branch_sha=branch_sha, fast_forward=fast_forward, races=races)

        if _is_ancestor(repo, branch_sha, old):
            return result("already_merged", old, f"{_short(branch)} ({branch_sha[:12]}) is "
                          f"already in {_short(target)} ({old[:12]})")

        fast_forward = _is_ancestor(repo, old, branch_sha)
        if fast_forward:
            new = branch_sha
        else:
            tree, conflicts = _merge_tree(repo, old, branch_sha)
            if conflicts is not None:
                listed = ", ".join(conflicts) or "(no paths reported)"
                return result("conflict", old, f"merging {_short(branch)} ({branch_sha[:12]}) "
                              f"into {_short(target)} ({old[:12]}) conflicts in {listed}; "
                              f"nothing changed, the branch is kept", conflicts)
            new = _commit_tree(repo, tree, old, branch_sha, message)

        checkouts = _check_checked_out(repo, target_ref, old)
        how = "fast-forward" if fast_forward else "merge commit"
        hook = _before_update_ref
        if hook is not None:
            hook(repo, target_ref, new, old)
        moved, last_cas_error = _compare_and_swap(
            repo, target_ref, new, old, f"parallel-harness: integrate {_short(branch)} ({how})")
        if moved:
            detail = (f"{_short(target)} {old[:12]} -> {new[:12]} ({how} of "
                      f"{_short(branch)} {branch_sha[:12]})")
            if races:
                detail += f" after {races} concurrent move(s) of the target"
            for path, index_tree in checkouts:
                detail += (f"; note: {_short(target)} is checked out in {path}, whose files and "
                           f"index still show an older tree (git status there shows the merged "
                           f"changes reversed); bring it up to date with: "
                           f"git -C {shlex.quote(str(path))} read-tree -m -u {index_tree} {new}")
            return result("merged", new, detail, fast_forward=fast_forward)
        races += 1
        if races > max_races:
            raise MergeRaceError(f"{_short(target)} moved concurrently {races} times while "
                                 f"integrating {_short(branch)}; giving up (nothing overwritten)",
                                 stderr=last_cas_error)
        time.sleep(min(0.01 * 2 ** races, 0.5))


# ---------------------------------------------------------------------- plumbing

_OID = re.compile(rb"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def _merge_tree(repo: Path, ours: str, theirs: str) -> tuple[str, tuple[str, ...] | None]:
    """(tree, None) for a clean merge, (tree, conflicting paths) for a conflict.

    ``-z`` keeps unusual path names unquoted. Exit code 1 means "conflict"
    only when a tree id was printed: git 2.39 also exits 1 (not 128) for an
    argument it cannot resolve ("not something we can merge"), which is why
    full commit ids are passed and the output is checked.
    """
    proc = _run(repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z",
                ours, theirs)
    fields = proc.stdout.split(b"\0")
    tree = fields[0].strip() if fields else b""
    if proc.returncode not in (0, 1) or not _OID.match(tree):
        hint = " (merge-tree --write-tree needs git >= 2.38)" if proc.returncode == 129 else ""
        raise _fail(f"git merge-tree failed for {ours[:12]} and {theirs[:12]}{hint}", proc)
    if proc.returncode == 0:
        return tree.decode(), None
    paths: list[str] = []
    for field in fields[1:]:
        if not field:          # an empty field starts the (suppressed) messages section
            break
        path = os.fsdecode(field)
        if path not in paths:
            paths.append(path)
    return tree.decode(), tuple(paths)


def _commit_tree(repo: Path, tree: str, first: str, second: str, message: str) -> str:
    body = message if message.endswith("\n") else message + "\n"
    # The message goes in on stdin: no argv parsing of user text.
    proc = _run(repo, "commit-tree", tree, "-p", first, "-p", second, input=body.encode())
    sha = proc.stdout.strip()
    if proc.returncode != 0 or not _OID.match(sha):
        raise _fail("git commit-tree failed to create the merge commit", proc)
    return sha.decode()


def _compare_and_swap(repo: Path, ref: str, new: str, old: str, reason: str) -> tuple[bool, str]:
    """(True, "") if ``ref`` moved from ``old`` to ``new``; (False, stderr) if it
    lost to a concurrent update. Anything else raises."""
    proc = _run(repo, "update-ref", "-m", reason, ref, new, old)
    if proc.returncode == 0:
        return True, ""
    current = _run(repo, "rev-parse", "--verify", "--quiet", ref).stdout.decode().strip()
    if current and current != old:
        return False, _err(proc)                  # the target moved under us
    if "File exists" in _err(proc):
        return False, _err(proc)                  # another updater holds <ref>.lock right now
    raise _fail(f"git update-ref {ref} failed", proc)


# ------------------------------------------------------ checked-out target check


def worktrees_on(repo: Path, ref: str) -> list[Path]:
    """The worktrees (not bare, not prunable) where ``ref`` is checked out."""
    proc = _run(repo, "worktree", "list", "--porcelain", "-z")
    if proc.returncode != 0:
        raise _fail("git worktree list failed", proc)
    found: list[Path] = []
    record: dict[bytes, bytes] = {}
    for field in proc.stdout.split(b"\0"):
        if field:
            key, _, value = field.partition(b" ")
            record[key] = value
            continue
        if (record.get(b"branch") == ref.encode() and b"bare" not in record
                and b"prunable" not in record and b"worktree" in record):
            found.append(Path(os.fsdecode(record[b"worktree"])))
        record = {}
    return found


def _check_checked_out(repo: Path, target_ref: str, tip: str) -> list[tuple[Path, str]]:
    """Refuse if ``target_ref`` is checked out in a worktree holding work.

    Returns the worktrees where it is checked out, each with the tree of
    its index (the tip's tree or an older one): moving the ref leaves them
    behind. Read-only: ``--no-optional-locks`` keeps ``status`` from
    rewriting the operator's index.
    """
    checkouts: list[tuple[Path, str]] = []
    for wt in worktrees_on(repo, target_ref):
        if not wt.is_dir():
            continue
        env = git_env({"GIT_OPTIONAL_LOCKS": "0"})
        proc = _run(wt, "--no-optional-locks", "status", "--porcelain=v1", "-z",
                    "--untracked-files=no", "--no-renames", "--ignore-submodules=none", env=env)
        if proc.returncode != 0:
            raise _fail(f"cannot inspect {wt}, where {_short(target_ref)} is checked out", proc)
        if not proc.stdout:                            # clean at the tip
            tip_tree = _run(repo, "rev-parse", f"{tip}^{{tree}}").stdout.decode().strip()
            checkouts.append((wt, tip_tree))
            continue
        entries = [e for e in proc.stdout.split(b"\0") if e]
        unstaged = [os.fsdecode(e[3:]) for e in entries
                    if e[1:2] != b" "]       # unstaged change or unmerged entry
        if unstaged:
            raise TargetDirty(
                f"{_short(target_ref)} is checked out in {wt} with uncommitted changes "
                f"({', '.join(unstaged[:5])}{', ...' if len(unstaged) > 5 else ''}); refusing to "
                f"move it under them: commit or stash them there, or integrate into a branch "
                f"that is not checked out")
        index_tree = _index_tree(wt, env)
        if index_tree is None or not _is_ancestor_tree(repo, index_tree, tip):
            staged = [os.fsdecode(e[3:]) for e in entries]
            raise TargetDirty(
                f"{_short(target_ref)} is checked out in {wt} with staged changes that are not "
                f"an earlier state of {_short(target_ref)} ({', '.join(staged[:5])}"
                f"{', ...' if len(staged) > 5 else ''}); refusing to move it under them: commit "
                f"or unstage them there, or integrate into a branch that is not checked out")
        checkouts.append((wt, index_tree))
    return checkouts


def _index_tree(wt: Path, env: dict[str, str]) -> str | None:
    """The tree id the worktree's index would write, computed read-only.

    ``git write-tree`` would take the operator's ``index.lock``; instead the
    stage-0 entries from ``ls-files -s`` are hashed into tree objects here.
    None if the index has anything a plain tree cannot express.
    """
    fmt = _run(wt, "rev-parse", "--show-object-format", env=env)
    algo = fmt.stdout.decode().strip() or "sha1"
    if fmt.returncode != 0 or algo not in ("sha1", "sha256"):
        return None
    proc = _run(wt, "--no-optional-locks", "ls-files", "-s", "-z", env=env)
    if proc.returncode != 0:
        return None
    root: dict[bytes, object] = {}
    for entry in proc.stdout.split(b"\0"):
        if not entry:
            continue
        meta, _, path = entry.partition(b"\t")
        mode, oid, stage = meta.split(b" ")
        if stage != b"0" or mode not in (b"100644", b"100755", b"120000", b"160000"):
            return None
        *dirs, name = path.split(b"/")
        node = root
        for d in dirs:
            child = node.setdefault(d, {})
            if not isinstance(child, dict):
                return None
            node = child
        node[name] = (mode, bytes.fromhex(oid.decode()))

    def write(node: dict[bytes, object]) -> bytes:
        items = []
        for name, value in node.items():
            if isinstance(value, dict):
                items.append((name + b"/", b"40000", name, write(value)))
            else:
                mode, raw = value  # type: ignore[misc]
                items.append((name, mode, name, raw))
        items.sort(key=lambda item: item[0])
        body = b"".join(mode + b" " + name + b"\0" + raw for _, mode, name, raw in items)
        return hashlib.new(algo, b"tree %d\0" % len(body) + body).digest()

    return write(root).hex()


def _is_ancestor_tree(repo: Path, tree: str, tip: str) -> bool:
    """Whether ``tree`` is the tree of ``tip`` or of one of its recent ancestors."""
    proc = _run(repo, "log", f"--max-count={_BEHIND_SEARCH_LIMIT}", "--format=%T", tip)
    if proc.returncode != 0:
        raise _fail(f"git log {tip[:12]} failed", proc)
    return tree.encode() in proc.stdout.split()
