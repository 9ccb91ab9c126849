#!/usr/bin/env bash
# Stop the test cluster of tests/slurm/start.sh: slurmd, slurmctld, and munged when start.sh
# started it (not with --keep-munge). Running jobs are killed with slurmd. Idempotent.
# The state folder ($L2G_SLURM_DIR, default /tmp/l2g-slurm) and /etc/slurm/slurm.conf stay.
set -uo pipefail

DIR="${L2G_SLURM_DIR:-/tmp/l2g-slurm}"

stop_pidfile() {
    local pidfile="$1" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        echo "tests/slurm/stop.sh: stopping $(basename "$pidfile" .pid) ($pid)" >&2
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}

stop_pidfile "$DIR/slurmd.pid"
stop_pidfile "$DIR/slurmctld.pid"
if [ "${1:-}" != "--keep-munge" ] && [ -e "$DIR/munged.ours" ]; then
    stop_pidfile /run/munge/munged.pid
    rm -f "$DIR/munged.ours"
fi
exit 0
