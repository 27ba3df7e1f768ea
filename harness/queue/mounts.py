"""Is the filesystem a queue lives on safe for several hosts at once?

The protocol needs, across hosts, an atomic ``rename`` that exactly one
claimant wins, and ``flock`` locks every host sees. Measured on real NFS
(shared/nfs-lab): NFSv4.1+ gives both; ``nolock`` or ``local_lock=`` makes
locks per host (two coordinators ran on one workspace); before 4.1 there are
no sessions, so a retransmitted rename may be answered from a duplicate-request
cache or not at all. Other network filesystems are refused unless the operator
vouches for them (``[run] trust_filesystem``). Local filesystems are fine for
several "hosts" on one machine (tests, containers sharing a volume).

Linux: reads ``/proc/self/mountinfo``. Elsewhere nothing is known and nothing
is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LOCAL: Final = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay",
                          "f2fs", "jfs", "reiserfs", "bcachefs", "ramfs"})
NFS: Final = frozenset({"nfs", "nfs4"})


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    source: str
    options: frozenset[str]  # mount and superblock options, "key" or "key=value"

    def option(self, key: str) -> str | None:
        for opt in self.options:
            name, _, value = opt.partition("=")
            if name == key:
                return value
        return None


def mount_of(path: Path | str, mountinfo: str = "/proc/self/mountinfo") -> Mount | None:
    """The mount that holds ``path`` (the longest mount point that is a prefix of it)."""
    real = os.path.realpath(path)
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    best: Mount | None = None
    for line in lines:
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        if real != point and not real.startswith(point.rstrip("/") + "/"):
            continue
        if best is None or len(point) >= len(best.point):
            opts = set(fields[5].split(",")) | set((tail[2] if len(tail) > 2 else "").split(","))
            best = Mount(point, tail[0], tail[1], frozenset(o for o in opts if o))
    return best


def multi_host_problem(mount: Mount | None) -> str | None:
    """Why several hosts may not share a queue on ``mount``; None if they may."""
    if mount is None or mount.fstype in LOCAL:
        return None
    where = f"{mount.point} ({mount.fstype} from {mount.source})"
    if mount.fstype in NFS:
        if "nolock" in mount.options or mount.option("local_lock") not in (None, "none"):
            return (f"{where} is mounted with per-host locks (nolock or local_lock=): a"
                    " coordinator's lock is not seen by the other hosts; remount without them")
        vers = mount.option("vers") or mount.option("nfsvers") or ""
        major, _, minor = vers.partition(".")
        if not vers or (major, minor or "0") < ("4", "1"):
            return (f"{where} is NFS version {vers or 'unknown'}: several hosts need NFSv4.1 or"
                    " later (sessions make a retransmitted rename exactly-once); mount with"
                    " vers=4.2")
        return None
    return (f"{where} is not a filesystem known to keep rename atomic and flock shared across"
            " hosts; put the workspace on NFSv4.1+, or set [run] trust_filesystem = true if you"
            " know it does")


def nfs_advice(mount: Mount | None) -> str | None:
    """How to make an NFS mount see other hosts' changes sooner (for doctor)."""
    if mount is None or mount.fstype not in NFS:
        return None
    if mount.option("lookupcache") == "positive" or mount.option("actimeo") in ("1", "2", "3"):
        return None
    return (f"{mount.point}: mount with lookupcache=positive (or actimeo=1..3): a host that"
            " does not list a directory can see another host's renames up to acdirmax"
            f" ({mount.option('acdirmax') or 60} s) late; correctness does not depend on it,"
            " promptness does")
