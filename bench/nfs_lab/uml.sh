#!/bin/bash
# Host-side control of the UML NFS lab (adapted from shared/nfs-lab/lab/uml.sh and setup.sh).
#   uml.sh setup          apt installs, /tmp/nfs/uml, the export image
#   uml.sh up             uml_switch + the knfsd server guest (LEASE=15 by default)
#   uml.sh client UMID IP JOB [KEY=VAL ...]   boot a client guest in the background; prints its pid
#   uml.sh down           end every lab process by its recorded pid (server: mconsole halt)
# Every process started here has its pid in $U/pids/; `down` ends exactly those. The guests are
# wired only to each other, through uml_switch's unix socket: no tuntap, no slirp, no host
# interface, no network namespace.
set -u
U=/tmp/nfs/uml
HERE=$(cd "$(dirname "$0")" && pwd)

setup() {
    if ! command -v linux >/dev/null || ! command -v uml_switch >/dev/null || ! command -v exportfs >/dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q user-mode-linux uml-utilities \
            nfs-kernel-server kmod iptables
    fi
    mkdir -p $U/{out/boot,console,pids,jobs/gen,mnt/nfs,mnt/out,mnt/scratch,mnt/srv,mnt/local}
    cp "$HERE/guest-init.sh" $U/ && chmod +x $U/guest-init.sh
    cp "$HERE"/jobs/* $U/jobs/
    [ -f $U/export.img ] || { truncate -s 2G $U/export.img; mkfs.ext4 -q -F -L phexport $U/export.img; }
}

uml_boot() {  # uml_boot UMID MAC EXTRA-ARGS... ; prints the pid
    local umid=$1 mac=$2; shift 2
    TMPDIR=/dev/shm setsid linux umid=$umid mem=${MEM:-768M} root=/dev/root rootfstype=hostfs \
        rootflags=/ ro init=$U/guest-init.sh \
        eth0=daemon,$mac,unix,$U/switch.ctl con0=null,fd:1 con=null ssl=null quiet "$@" \
        </dev/null >$U/console/$umid.console 2>&1 &
    echo $! > $U/pids/$umid.pid
    echo $!
}

up() {
    # A socket left by a switch that is gone (the machine restarted) answers nobody:
    # only a switch whose recorded pid lives counts.
    if ! { [ -f $U/pids/switch.pid ] && kill -0 $(cat $U/pids/switch.pid) 2>/dev/null; }; then
        rm -f $U/switch.ctl
        setsid uml_switch -unix $U/switch.ctl </dev/null >$U/console/switch.log 2>&1 &
        echo $! > $U/pids/switch.pid
        sleep 0.5
    fi
    if [ -f $U/pids/phsrv.pid ] && kill -0 $(cat $U/pids/phsrv.pid) 2>/dev/null; then
        echo "server already up (pid $(cat $U/pids/phsrv.pid))"; return 0
    fi
    rm -f $U/out/server.ready
    uml_boot phsrv fe:fd:0a:4d:00:01 ubd0=$U/export.img ROLE=server GIP=10.77.0.1 GHOST=nfssrv \
        LEASE=${LEASE:-15} >/dev/null
    for i in $(seq 120); do [ -e $U/out/server.ready ] && break; sleep 0.5; done
    [ -e $U/out/server.ready ] && echo "server up (pid $(cat $U/pids/phsrv.pid))" || { echo "server did not come up"; return 1; }
}

client() {  # client UMID IP JOB [KEY=VAL ...]; GH=hostname (default: UMID)
    local umid=$1 ip=$2 job=$3; shift 3
    uml_boot $umid fe:fd:0a:4d:00:$(printf %02x ${ip##*.}) ROLE=client GIP=$ip GHOST=${GH:-$umid} JOB=$job "$@"
}

wait_pid() {  # wait_pid PID [TIMEOUT]
    local pid=$1 t=${2:-600}
    for i in $(seq $((t*4))); do kill -0 $pid 2>/dev/null || return 0; sleep 0.25; done
    return 1
}

down() {
    if [ -f $U/pids/phsrv.pid ] && kill -0 $(cat $U/pids/phsrv.pid) 2>/dev/null; then
        uml_mconsole phsrv halt >/dev/null 2>&1
        wait_pid $(cat $U/pids/phsrv.pid) 20 || kill -9 $(cat $U/pids/phsrv.pid)
    fi
    for f in $U/pids/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat $f)
        if kill -0 $pid 2>/dev/null; then
            [ "$(basename $f)" != switch.pid ] && uml_mconsole $(basename $f .pid) halt >/dev/null 2>&1
            wait_pid $pid 10 || { kill -TERM $pid; wait_pid $pid 10 || kill -9 $pid; }
        fi
        rm -f $f
    done
    rm -f $U/switch.ctl
    echo "UML processes left: $(ps -eo args | grep -c '^[l]inux umid=')"
}

case "${1:-}" in
    setup) setup ;;
    up) up ;;
    down) down ;;
    client) shift; client "$@" ;;
    *) echo "usage: uml.sh setup|up|down|client UMID IP JOB [KEY=VAL...]" >&2; exit 2 ;;
esac
