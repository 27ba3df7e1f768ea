#!/bin/sh
# PID 1 of a User-mode Linux guest for bench/powerloss_lab.py (its own Linux kernel, run as
# a process on the host; killing that process is a power cut for the guest's disk).
# The guest's / is the host's / through hostfs, read-only: it runs the host's python and the
# checkout's venv. It writes to its ubd disk (the queue under test) and to $P/out (hostfs).
# Kernel command-line words KEY=VALUE arrive as environment variables:
#   ROLE work | check    P  the lab directory on the host    PY  the python to run
#   LAB  bench/powerloss_lab.py    FSCK  1: e2fsck -fy before mounting (a disk without a journal)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/run/home PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/home /run/tmp
export TMPDIR=/run/tmp
mount -t hostfs none $P/mnt/out -o $P/out
exec >>$P/mnt/out/$ROLE.log 2>&1
echo "=== boot $(date +%s.%N) role=$ROLE kernel=$(uname -r)"
[ "$FSCK" = 1 ] && { e2fsck -fy /dev/ubda; echo "e2fsck exit $?"; }
mount -t ext4 /dev/ubda $P/mnt/q || { echo "mount failed"; poweroff -f; }
grep " $P/mnt/q " /proc/mounts
"$PY" "$LAB" --guest "$ROLE" "$P/mnt/q/queue" "$P/mnt/out"
echo "--- $ROLE exit $? $(date +%s.%N)"
umount $P/mnt/q
poweroff -f
