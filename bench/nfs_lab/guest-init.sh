#!/bin/sh
# PID 1 of a User-mode Linux guest (its own Linux 6.1 kernel, run as a process on the host).
# Adapted from shared/nfs-lab/lab/guest-init.sh (fault injection dropped).
# The guest's / is the host's / through hostfs, READ-ONLY: it runs the host's python, git and
# the project checkout's venv, and writes only to /tmp/nfs/uml/out (mounted rw at $OUT).
# Kernel command-line words KEY=VALUE arrive here as environment variables:
#   ROLE server | client      GIP   address on the private uml_switch (10.77.0.0/24; exists only
#                                   inside the guest kernels, never on the host's network)
#   GHOST hostname            JOB   (client) script to run once the export is mounted; then the
#                                   guest unmounts and powers off
#   NFSVERS (client) 4.2 by default; NFSOPTS (client) extra mount options, e.g. nolock
#   LEASE (server) NFSv4 lease and grace time, seconds (15 by default; knfsd's own is 90)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/run/home PYTHONDONTWRITEBYTECODE=1
U=/tmp/nfs/uml
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/home
mount -t tmpfs tmpfs /var/lib/nfs
mount -t tmpfs tmpfs $U/mnt/scratch
mkdir -p $U/mnt/scratch/tmp $U/mnt/scratch/lib/modules /var/lib/nfs/v4recovery /var/lib/nfs/rpc_pipefs
export TMPDIR=$U/mnt/scratch/tmp
ln -s /usr/lib/uml/modules/$(uname -r) $U/mnt/scratch/lib/modules/$(uname -r)
MP="modprobe -d $U/mnt/scratch"
mount -t hostfs none $U/mnt/out -o $U/out
export OUT=$U/mnt/out
LOG=$OUT/boot/$GHOST-$GIP.log
exec >>$LOG 2>&1
echo "=== boot $(date +%s.%N) $GHOST role=$ROLE ip=$GIP job=$JOB kernel=$(uname -r) boot_id=$(cat /proc/sys/kernel/random/boot_id)"
hostname "$GHOST"
ip link set lo up
ip addr add "$GIP/24" dev eth0
ip link set eth0 up

if [ "$ROLE" = server ]; then
    $MP nfsd || echo "modprobe nfsd failed"
    mount -t nfsd nfsd /proc/fs/nfsd || echo "mount nfsd failed"
    mount -t ext4 /dev/ubda $U/mnt/srv || echo "mount ubda failed"
    chmod 1777 $U/mnt/srv
    echo "${LEASE:-15}" > /proc/fs/nfsd/nfsv4leasetime
    echo "${LEASE:-15}" > /proc/fs/nfsd/nfsv4gracetime
    mkdir -p /run/rpcbind
    rpcbind -w || echo "rpcbind failed"    # for NFSv3 clients (MOUNT protocol); v4 needs none
    rpc.mountd --no-udp || echo "mountd failed"
    exportfs -o rw,sync,no_subtree_check,no_root_squash,fsid=0 "10.77.0.0/24:$U/mnt/srv"
    rpc.nfsd --nfs-version 3 --nfs-version 4.0 --nfs-version 4.1 --nfs-version 4.2 --no-udp 8 || echo "rpc.nfsd failed"
    cat /proc/fs/nfsd/versions; echo
    echo "SERVER READY $(date +%s.%N)"
    touch $OUT/server.ready
    while :; do sleep 3600; done    # until the host halts it (uml_mconsole phsrv halt)
fi

$MP nfsv4 || echo "modprobe nfsv4 failed"
$MP nfsv3 || echo "modprobe nfsv3 failed"
for i in 1 2 3 4 5 6 7 8 9 10; do
    case "${NFSVERS:-4.2}" in
        3) SRC=10.77.0.1:$U/mnt/srv ;;   # NFSv3 names the export by its path (fsid=0 is v4 only)
        *) SRC=10.77.0.1:/ ;;
    esac
    mount -t nfs -o "vers=${NFSVERS:-4.2}${NFSOPTS:+,$NFSOPTS}" $SRC $U/mnt/nfs && break
    echo "mount attempt $i failed"; sleep 1
done
grep " $U/mnt/nfs " /proc/mounts
echo "CLIENT READY $(date +%s.%N)"
if [ -n "$JOB" ]; then
    echo "--- job $JOB $(date +%s.%N)"
    /bin/sh "$JOB"
    echo "--- job exit $? $(date +%s.%N)"
fi
sync
umount $U/mnt/nfs || umount -f $U/mnt/nfs
echo "=== halt $(date +%s.%N)"
poweroff -f
