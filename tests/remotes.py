"""Real git remotes for the tests: a bare repository, `git daemon` on 127.0.0.1, a "human"
who commits and pushes to the remote as a person would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "Human", "GIT_AUTHOR_EMAIL": "human@example.invalid",
           "GIT_COMMITTER_NAME": "Human", "GIT_COMMITTER_EMAIL": "human@example.invalid"}


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=check, env={**os.environ, **GIT_ENV})


def bare_remote(path: Path, seed: Path) -> Path:
    """A bare repository at ``path`` holding ``seed``'s main."""
    git(path.parent, "init", "-q", "--bare", "-b", "main", str(path))
    git(seed, "push", "-q", str(path), "main:main")
    return path


def log_of(remote: Path, branch: str = "main") -> list[str]:
    return git(remote, "rev-list", branch).stdout.split()


def contains(remote: Path, commit: str, branch: str = "main") -> bool:
    return git(remote, "merge-base", "--is-ancestor", commit, branch,
               check=False).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`git daemon --enable=receive-pack` serving ``base`` on 127.0.0.1 (real git://
    transport); stopped by its recorded process group."""

    def __init__(self, base: Path) -> None:
        self.base, self.port = base, free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
             f"--base-path={base}", "--listen=127.0.0.1", f"--port={self.port}", str(base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("git daemon did not start")

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


HUMAN = r"""
import os, subprocess, sys, time
url, work, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
env = {**os.environ, "GIT_AUTHOR_NAME": "Human", "GIT_AUTHOR_EMAIL": "h@x.invalid",
       "GIT_COMMITTER_NAME": "Human", "GIT_COMMITTER_EMAIL": "h@x.invalid"}
run = lambda *a: subprocess.run(["git", *a], cwd=work, env=env, capture_output=True, text=True)
subprocess.run(["git", "clone", "-q", url, work], env=env, check=True)
for n in range(count):
    with open(os.path.join(work, f"human-{n}.txt"), "w") as f:
        f.write(f"by hand {n}\n")
    run("add", "-A"); run("commit", "-q", "-m", f"human {n}")
    while run("push", "-q", "origin", "HEAD:main").returncode != 0:
        run("pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
    print(run("rev-parse", "HEAD").stdout.strip(), flush=True)
    time.sleep(0.05)
"""


def start_human(url: str, work: Path, count: int) -> subprocess.Popen[str]:
    """A person committing ``count`` files to the remote's main, pulling when rejected;
    prints each commit it pushed."""
    return subprocess.Popen([sys.executable, "-c", HUMAN, url, str(work), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
