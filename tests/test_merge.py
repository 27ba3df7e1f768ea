"""harness.repo.merge: integrating finished branches into the target, on real repos.

The repositories are built with plumbing and a temporary index, so building
branches never touches a worktree; the main worktree has ``main`` checked out
(as the operator's does) unless a test says otherwise.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from harness.repo import merge
from harness.repo.merge import MergeError, MergeRaceError, MergeResult, integrate, is_merged

ENV_ID = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
          "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No global/system config and no identity: integrate must cope on its own."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    for var in (*ENV_ID, "EMAIL", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


def git(repo: Path, *args: str, env: dict[str, str] | None = None,
        input: bytes | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, input=input,
                          env={**os.environ, **ENV_ID, **(env or {})})
    assert proc.returncode == 0, (args, proc.stderr.decode())
    return proc.stdout.decode().strip()


def rev(repo: Path, ref: str) -> str:
    return git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")


def ancestor(repo: Path, a: str, b: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", a, b],
                          capture_output=True).returncode == 0


def commit(repo: Path, branch: str, files: dict[str, str], message: str,
           base: str | None = None) -> str:
    """Commit ``files`` on ``branch`` (created from ``base``) without any worktree."""
    parent = rev(repo, base or branch)
    env = {"GIT_INDEX_FILE": str(repo.parent / f"index-{os.getpid()}")}
    git(repo, "read-tree", parent, env=env)
    for path, content in files.items():
        blob = git(repo, "hash-object", "-w", "--stdin", input=content.encode())
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
    tree = git(repo, "write-tree", env=env)
    os.unlink(env["GIT_INDEX_FILE"])
    sha = git(repo, "commit-tree", tree, "-p", parent, "-m", message)
    git(repo, "update-ref", f"refs/heads/{branch}", sha)
    return sha


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "README.md").write_text("# project\nline two\nline three\n")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "initial commit")
    return root


def branch_commits(repo: Path, branch: str, base: str) -> list[str]:
    return git(repo, "rev-list", f"{base}..{branch}").split()


@pytest.mark.parametrize("checked_out", [True, False], ids=["main-checked-out", "detached"])
def test_three_branches_merge_in_order(repo: Path, checked_out: bool) -> None:
    if not checked_out:
        git(repo, "checkout", "-q", "--detach")
    base = rev(repo, "main")
    for name in ("a", "b", "c"):
        commit(repo, f"harness/{name}", {f"{name}.txt": f"{name} 1\n"}, f"{name}: one", base=base)
        commit(repo, f"harness/{name}", {f"{name}.txt": f"{name} 2\n"}, f"{name}: two")
    wanted = {n: branch_commits(repo, f"harness/{n}", base) for n in "abc"}

    results: list[MergeResult] = []
    for name in "abc":
        before = rev(repo, "main")
        res = integrate(repo, "main", f"harness/{name}", message=f"integrate {name}")
        results.append(res)
        assert res.status == "merged" and res.conflicts == () and res.races == 0
        assert res.target_sha == rev(repo, "main") and res.previous_sha == before
        if name == "a":                       # main had not moved: fast-forward, commits as-is
            assert res.fast_forward and res.target_sha == rev(repo, "harness/a")
        else:                                 # a merge commit, target first, branch second
            assert not res.fast_forward
            parents = git(repo, "rev-list", "--parents", "-n1", res.target_sha).split()[1:]
            assert parents == [before, rev(repo, f"harness/{name}")]
            assert git(repo, "log", "-1", "--format=%s|%an|%cn", res.target_sha) == \
                f"integrate {name}|parallel-harness|parallel-harness"

    history = set(git(repo, "log", "--format=%H", "main").split())
    for name, shas in wanted.items():
        assert len(shas) == 2 and set(shas) <= history
        assert ancestor(repo, f"harness/{name}", "main") and is_merged(repo, "main",
                                                                       f"harness/{name}")
    assert git(repo, "ls-tree", "--name-only", "main").split() == \
        ["README.md", "a.txt", "b.txt", "c.txt"]
    assert git(repo, "show", "main:b.txt") == "b 2"

    # No worktree was touched: the operator's checkout still has only README.md.
    assert sorted(p.name for p in repo.iterdir() if p.name != ".git") == ["README.md"]
    if checked_out:
        note = results[-1].detail
        assert "checked out in" in note and "read-tree -m -u" in note
        # The suggested command brings the stale (but clean) checkout up to date.
        cmd = shlex.split(note.split("bring it up to date with: ")[1])
        subprocess.run(cmd, check=True, capture_output=True)
        assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
        assert (repo / "c.txt").read_text() == "c 2\n"


def test_fast_forward_keeps_the_agents_commits(repo: Path) -> None:
    old = rev(repo, "main")
    tip = commit(repo, "harness/ff", {"x.txt": "x\n"}, "x", base="main")
    count = git(repo, "rev-list", "--count", "--all")
    res = integrate(repo, "main", "harness/ff")
    assert res == MergeResult("merged", tip, (), res.detail, previous_sha=old, branch_sha=tip,
                              fast_forward=True, races=0)
    assert rev(repo, "main") == tip
    assert git(repo, "rev-list", "--count", "--all") == count     # no commit created
    assert "fast-forward" in res.detail


def test_same_lines_first_merges_second_conflicts(repo: Path) -> None:
    odd = "docs/naïve file.txt"
    commit(repo, "main", {odd: "shared\n"}, "add odd file")
    base = rev(repo, "main")
    commit(repo, "harness/one", {"README.md": "# project\nONE\nline three\n", odd: "one\n",
                                 "one.txt": "1\n"}, "one", base=base)
    two = commit(repo, "harness/two", {"README.md": "# project\nTWO\nline three\n", odd: "two\n",
                                       "two.txt": "2\n"}, "two", base=base)
    assert integrate(repo, "main", "harness/one").status == "merged"
    after_one = rev(repo, "main")
    objects_before = git(repo, "rev-list", "--count", "--all")

    res = integrate(repo, "main", "harness/two")
    assert res.status == "conflict"
    assert sorted(res.conflicts) == sorted(["README.md", odd])
    assert res.target_sha == after_one and res.branch_sha == two
    assert "README.md" in res.detail
    # Nothing changed: target unchanged, branch kept, no commit created.
    assert rev(repo, "main") == after_one
    assert rev(repo, "harness/two") == two
    assert git(repo, "rev-list", "--count", "--all") == objects_before
    assert not is_merged(repo, "main", "harness/two")
    assert git(repo, "status", "--porcelain", "--untracked-files=no").startswith("M ")  # stale only


def test_concurrent_target_move_is_detected_and_retried(repo: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base = rev(repo, "main")
    mine = commit(repo, "harness/mine", {"mine.txt": "m\n"}, "mine", base=base)
    calls: list[tuple[str, str]] = []
    concurrent: list[str] = []

    def hook(repo_: Path, ref: str, new: str, old: str) -> None:
        calls.append((new, old))
        if not concurrent:                     # someone else integrates exactly once, now
            concurrent.append(commit(repo, "main", {"other.txt": "o\n"}, "concurrent push"))

    monkeypatch.setattr(merge, "_before_update_ref", hook)
    res = integrate(repo, "main", "harness/mine")

    assert res.status == "merged" and res.races == 1
    assert len(calls) == 2
    first_new, first_old = calls[0]
    assert first_old == base and first_new == mine        # planned a fast-forward...
    assert calls[1][1] == concurrent[0]                    # ...lost, recomputed on the new tip
    assert not res.fast_forward and res.previous_sha == concurrent[0]
    final = rev(repo, "main")
    assert final == res.target_sha != mine
    assert ancestor(repo, concurrent[0], final)            # the concurrent move survived
    assert ancestor(repo, mine, final)
    assert set(git(repo, "ls-tree", "--name-only", final).split()) == \
        {"README.md", "mine.txt", "other.txt"}
    assert "concurrent" in res.detail


def test_race_limit_gives_up_without_overwriting(repo: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    commit(repo, "harness/mine", {"mine.txt": "m\n"}, "mine", base="main")
    pushed: list[str] = []

    def hook(repo_: Path, ref: str, new: str, old: str) -> None:
        pushed.append(commit(repo, "main", {f"o{len(pushed)}.txt": "o\n"}, "push"))

    monkeypatch.setattr(merge, "_before_update_ref", hook)
    with pytest.raises(MergeRaceError) as info:
        integrate(repo, "main", "harness/mine", max_races=2)
    assert len(pushed) == 3 and "3 times" in str(info.value)
    assert rev(repo, "main") == pushed[-1]                  # every concurrent push kept
    assert all(ancestor(repo, p, "main") for p in pushed)
    assert not is_merged(repo, "main", "harness/mine")


def test_already_merged(repo: Path) -> None:
    commit(repo, "harness/x", {"x.txt": "x\n"}, "x", base="main")
    commit(repo, "main", {"y.txt": "y\n"}, "y")
    first = integrate(repo, "main", "harness/x")
    assert first.status == "merged" and not first.fast_forward
    again = integrate(repo, "main", "harness/x")
    assert again.status == "already_merged" and again.target_sha == first.target_sha
    assert rev(repo, "main") == first.target_sha
    # A branch that never diverged from the target is already merged too.
    git(repo, "branch", "harness/empty", "main")
    assert integrate(repo, "main", "harness/empty").status == "already_merged"


def test_missing_branch_or_target_raises_naming_it(repo: Path) -> None:
    with pytest.raises(MergeError, match="harness/ghost") as info:
        integrate(repo, "main", "harness/ghost")
    assert info.value.command and info.value.command[0] == "git"
    with pytest.raises(MergeError, match="nope"):
        integrate(repo, "nope", "main")
    with pytest.raises(MergeError, match="harness/ghost"):
        is_merged(repo, "main", "harness/ghost")
    with pytest.raises(MergeError):
        integrate(repo.parent / "not-a-repo", "main", "harness/x")


def test_unrelated_histories_is_an_error_not_a_conflict(repo: Path) -> None:
    env = {"GIT_INDEX_FILE": str(repo.parent / "orphan-index")}
    git(repo, "update-index", "--add", "--cacheinfo",
        f"100644,{git(repo, 'hash-object', '-w', '--stdin', input=b'u')},u.txt", env=env)
    orphan = git(repo, "commit-tree", git(repo, "write-tree", env=env), "-m", "orphan")
    git(repo, "update-ref", "refs/heads/harness/orphan", orphan)
    before = rev(repo, "main")
    with pytest.raises(MergeError, match="unrelated"):
        integrate(repo, "main", "harness/orphan")
    assert rev(repo, "main") == before


def test_checked_out_target_with_uncommitted_changes_is_refused(repo: Path) -> None:
    commit(repo, "harness/x", {"x.txt": "x\n"}, "x", base="main")
    before = rev(repo, "main")
    (repo / "README.md").write_text("operator is editing\n")        # unstaged edit
    with pytest.raises(MergeError, match="uncommitted changes"):
        integrate(repo, "main", "harness/x")
    assert rev(repo, "main") == before

    git(repo, "add", "README.md")                                     # staged, not history
    with pytest.raises(MergeError, match="staged changes"):
        integrate(repo, "main", "harness/x")
    assert rev(repo, "main") == before
    assert (repo / "README.md").read_text() == "operator is editing\n"

    git(repo, "reset", "-q", "--hard")                                 # clean again: allowed
    assert integrate(repo, "main", "harness/x").status == "merged"


def test_target_checked_out_in_a_linked_worktree(repo: Path, tmp_path: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(wt), "main")
    commit(repo, "harness/x", {"x.txt": "x\n"}, "x", base="main")
    (wt / "README.md").write_text("dirty\n")
    with pytest.raises(MergeError, match=str(wt)):
        integrate(repo, "main", "harness/x")
    git(wt, "checkout", "--", "README.md")
    res = integrate(repo, "main", "harness/x")
    assert res.status == "merged" and str(wt) in res.detail
    assert not (wt / "x.txt").exists()                                 # files not moved


def test_git_supports_merge_tree(repo: Path) -> None:
    version = merge.git_version(repo)
    assert version is not None
    assert merge.git_supports_merge_tree(repo) == (version[:2] >= (2, 38))
    assert merge.git_supports_merge_tree(repo)     # the suite itself needs it


def test_index_tree_matches_git_write_tree(repo: Path) -> None:
    """The read-only index hash agrees with git's own write-tree."""
    nested = {"a/b/c.txt": "c\n", "a/b.txt": "b\n", "a-b.txt": "-\n", "a.b": ".\n",
              "z é.txt": "z\n"}
    for path, content in nested.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    os.symlink("README.md", repo / "link")
    git(repo, "add", "-A")
    assert merge._index_tree(repo, merge.git_env()) == git(repo, "write-tree")
