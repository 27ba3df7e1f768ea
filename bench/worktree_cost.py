"""Cost of preparing a worktree for an attempt: reuse (branch switch + clean) vs add+remove.

    python bench/worktree_cost.py [--reps 20] [--files 200]

Builds a throwaway repository in a temp dir and prints ms per operation
(median, mean, max over --reps repetitions) and the git processes each
operation runs. Nothing is asserted. The machine is shared: compare rows of one run
(the raw-git reference row is the floor), not runs with each other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.repo import worktrees  # noqa: E402

ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}

calls = 0
_real_git = worktrees._git


def _counting_git(*args, **kwargs):
    global calls
    calls += 1
    return _real_git(*args, **kwargs)


worktrees._git = _counting_git


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, **ENV})


def make_repo(root: Path, files: int) -> Path:
    repo = root / "repo"
    (repo / "src").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for i in range(files):
        (repo / "src" / f"f{i:04d}.py").write_text(f"# file {i}\n" + "x = 1\n" * 20)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def measure(name: str, reps: int, op: Callable[[int], object],
            before: Callable[[int], object] | None = None) -> None:
    global calls
    times, procs = [], []
    for i in range(reps):
        if before:
            before(i)
        calls = 0
        t0 = time.perf_counter()
        op(i)
        times.append((time.perf_counter() - t0) * 1000)
        procs.append(calls)
    print(f"{name:<52} {statistics.median(times):7.2f} {statistics.mean(times):7.2f} "
          f"{max(times):7.2f}   {statistics.median(procs):g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--files", type=int, default=200, help="tracked files in the repo")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wt-bench-") as tmp:
        root = Path(tmp)
        repo = make_repo(root, args.files)
        wt = worktrees.ensure_worktree(repo, root / "worktrees" / "w1", "main")
        worktrees.start_attempt(wt, "main", "harness-attempts/warm/0")
        version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
        print(f"git {version.split()[-1]}, {args.files} tracked files, {args.reps} reps, "
              f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
        print(f"{'operation':<52} {'median':>7} {'mean':>7} {'max':>7}   git procs  (ms)")
        measure("ensure_worktree, existing (fast path)", args.reps,
                lambda i: worktrees.ensure_worktree(repo, wt, "main"))
        def raw_switch(i: int) -> None:  # the floor: the two git commands a reset needs
            git(wt, "checkout", "--force", "-q", "-B", f"harness-attempts/raw/{i}", "main")
            git(wt, "clean", "-fdq")
        measure("raw git checkout --force -B + clean (reference)", args.reps, raw_switch)
        measure("start_attempt, reused worktree, clean tree", args.reps,
                lambda i: worktrees.start_attempt(wt, "main", f"harness-attempts/clean/{i}"))

        def dirty_attempt(i: int) -> None:  # the previous attempt left one committed change
            (wt / "src" / "f0000.py").write_text(f"changed {i}\n")
            (wt / f"new-{i}.txt").write_text("new\n")
            worktrees.commit_attempt(wt, f"attempt {i}")
        measure("start_attempt, reused worktree, after a commit", args.reps,
                lambda i: worktrees.start_attempt(wt, "main", f"harness-attempts/used/{i}"),
                before=dirty_attempt)

        def uncommitted(i: int) -> None:
            (wt / "src" / "f0001.py").write_text(f"uncommitted {i}\n")
            (wt / f"untracked-{i}.txt").write_text("u\n")
        measure("start_attempt, uncommitted work saved first", args.reps,
                lambda i: worktrees.start_attempt(wt, "main", f"harness-attempts/save/{i}"),
                before=uncommitted)

        def change(i: int) -> None:
            (wt / f"work-{i}.txt").write_text("w\n")
        measure("commit_attempt, one new file", args.reps,
                lambda i: worktrees.commit_attempt(wt, f"work {i}"), before=change)
        measure("commit_attempt, nothing changed", args.reps,
                lambda i: worktrees.commit_attempt(wt, "noop"))

        fresh = root / "worktrees" / "cycle"

        def raw_cycle(i: int) -> None:
            git(repo, "worktree", "add", "-q", "--detach", str(fresh), "main")
            git(repo, "worktree", "remove", "--force", str(fresh))
        measure("git worktree add + remove (raw git)", args.reps, raw_cycle)

        def api_cycle(i: int) -> None:
            w = worktrees.ensure_worktree(repo, fresh, "main")
            worktrees.start_attempt(w, "main", f"harness-attempts/cycle/{i}")
            worktrees.remove_worktree(repo, w)
        measure("ensure_worktree + start_attempt + remove_worktree", args.reps, api_cycle)


if __name__ == "__main__":
    main()
