#!/usr/bin/env bash
# Install the Debian packages of the one-node SLURM test cluster (slurm-wlm: slurmctld, slurmd and
# the client commands; munge), unless they are installed already. Needs root and apt-get.
# The packages' services are not started here: tests/slurm/start.sh starts the daemons itself.
set -euo pipefail

missing=()
for package in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/slurm/install.sh: ${missing[*]} not installed and not root" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "tests/slurm/install.sh: ${missing[*]} not installed and no apt-get" >&2
    exit 1
fi

# Keep the packages' init scripts from starting services during the install (a machine without
# systemd, or a container); a policy-rc.d already in place is left alone.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends slurm-wlm munge
