#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, without systemd, as root:
#   munged, slurmctld and slurmd as background daemons; no accounting database (slurmdbd), no
#   cgroups; one node (this host, its real CPUs and memory) in one default partition.
# State, spool, logs and pid files live in $L2G_SLURM_DIR (default /tmp/l2g-slurm); the config goes
# to /etc/slurm/slurm.conf, where the client commands (sbatch, squeue, srun) look for it. A
# slurm.conf that this script did not write is never overwritten.
# Idempotent: with the cluster already up and the config unchanged it only checks the node.
# Prints the partition name on its last line. Stop with tests/slurm/stop.sh.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${L2G_SLURM_DIR:-/tmp/l2g-slurm}"
PARTITION="${L2G_SLURM_PARTITION:-l2gtest}"
CONF=/etc/slurm/slurm.conf
MARKER="# l2g-pipeline test cluster, written by tests/slurm/start.sh"

log() { echo "tests/slurm/start.sh: $*" >&2; }
die() { log "$*"; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
bash "$HERE/install.sh" >&2

mkdir -p "$DIR/state" "$DIR/spool"
chmod 755 "$DIR"

# --- munge: a key, and munged running as the munge user --------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>"$DIR/munged.stderr" \
        || die "munged failed: $(cat "$DIR/munged.stderr")"
    touch "$DIR/munged.ours"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# --- slurm.conf: this host with the CPUs and memory slurmd detects ----------------------------
NODE="$(hostname -s)"
HARDWARE="$(slurmd -C | head -n 1)"   # NodeName=... CPUs=... Boards=... RealMemory=...
case "$HARDWARE" in
    NodeName=*) ;;
    *) die "unexpected output of slurmd -C: $HARDWARE" ;;
esac
HARDWARE="${HARDWARE#NodeName=* }"
NEW_CONF="$(cat <<CONF
$MARKER; delete it freely.
ClusterName=l2gtest
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Without an accounting database, finished jobs are listed here (one line each).
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
MpiDefault=none
ReturnToService=2
# squeue keeps finished jobs for MinJobAge seconds: the Snakemake plugin reads their final state
# there (--slurm-status-command squeue) and wants at least 3x its first status-check delay.
MinJobAge=600
InactiveLimit=0
KillWait=30
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 $HARDWARE State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)"
if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARKER"; then
    die "$CONF exists and was not written by this script; not touching it"
fi
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    if alive "$DIR/slurmctld.pid" || alive "$DIR/slurmd.pid"; then
        log "config changed: restarting the daemons"
        bash "$HERE/stop.sh" --keep-munge >&2
    fi
    mkdir -p /etc/slurm
    printf '%s\n' "$NEW_CONF" > "$CONF"
fi

# --- daemons ----------------------------------------------------------------------------------
if ! alive "$DIR/slurmctld.pid"; then
    log "starting slurmctld (log: $DIR/slurmctld.log)"
    # daemons leave no file descriptor of ours open (a caller may be reading our output)
    slurmctld </dev/null >/dev/null 2>"$DIR/slurmctld.stderr" \
        || die "slurmctld failed: $(cat "$DIR/slurmctld.stderr")"
fi
for _ in $(seq 100); do
    scontrol ping >/dev/null 2>&1 && break
    sleep 0.2
done
scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer; see $DIR/slurmctld.log: $(tail -n 20 "$DIR/slurmctld.log" 2>/dev/null)"
if ! alive "$DIR/slurmd.pid"; then
    log "starting slurmd (log: $DIR/slurmd.log)"
    slurmd </dev/null >/dev/null 2>"$DIR/slurmd.stderr" || die "slurmd failed: $(cat "$DIR/slurmd.stderr")"
fi

# --- wait until the node takes jobs -----------------------------------------------------------
state=""
for i in $(seq 120); do
    state="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        drained|draining|down*|fail*)
            [ "$i" -eq 10 ] && scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $NODE is '$state', not idle; $(sinfo -R 2>&1); see $DIR/slurmctld.log and $DIR/slurmd.log" ;;
esac
log "node $NODE is $state in partition $PARTITION"
echo "$PARTITION"
