#!/usr/bin/env bash
# Start, stop or inspect a single-node SLURM cluster on this machine (CI and local testing of
# profiles/slurm). Needs root. Uses Debian's munge, slurmctld and slurmd (installed with apt-get when
# missing), no accounting database (the profile's `slurm-status-command: squeue` does not need one), no
# cgroups, and one fake GPU GRES (`gpu:fakegpu:1`, backed by /dev/null) so GPU rules are schedulable.
#
#   scripts/slurm_cluster.sh start    # install if needed, write /etc/slurm/*.conf, start the daemons
#   scripts/slurm_cluster.sh stop     # stop the daemons this script started (pid files)
#   scripts/slurm_cluster.sh status   # exit 0 when the node is up and idle/mixed/allocated
#
# Partitions: `cpu` (default) and `gpu`, both on the one node, so the profile's partition names work.
set -euo pipefail

PIDS=(/run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid)
say() { echo "[slurm_cluster] $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then say "must run as root"; exit 3; fi
}

install_packages() {
  local missing=()
  for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  say "installing munge and slurm (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Not the slurm-wlm metapackage: it drags in dozens of -dev and plugin packages.
  apt-get install -y -q --no-install-recommends munge slurm-client slurmctld slurmd >/dev/null
}

write_config() {
  local host ncpu mem
  host=$(hostname -s)
  ncpu=$(nproc --all)  # --all: OMP_NUM_THREADS (set by the test suite) must not shrink the node
  mem=$(( $(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo) - 1024 ))
  install -d /etc/slurm /run/slurm /var/spool/slurmd
  install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null \
    || install -d /var/spool/slurmctld /var/log/slurm
  cat > /etc/slurm/slurm.conf <<CONF
# Written by scripts/slurm_cluster.sh: a single-node test cluster.
ClusterName=medfm
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue for 300 s (the plugin's squeue status mode needs this).
MinJobAge=300
# Without a default, a job with no --mem would take the whole node's memory.
DefMemPerCPU=512
InactiveLimit=0
KillWait=5
Waittime=0
GresTypes=gpu
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${ncpu} RealMemory=${mem} Gres=gpu:fakegpu:1 State=UNKNOWN
PartitionName=cpu Nodes=${host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${host} Default=NO MaxTime=INFINITE State=UP
CONF
  # A GRES needs a device file, or slurmd drops it and drains the node ("count reported lower").
  cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=${host} Name=gpu Type=fakegpu File=/dev/null
CONF
}

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
  fi
  munge -n | unmunge >/dev/null
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -o %t 2>/dev/null | head -1 || true; }

start() {
  need_root
  install_packages
  write_config
  start_munge
  running /run/slurm/slurmctld.pid || slurmctld
  running /run/slurm/slurmd.pid || slurmd
  local state=""
  for i in $(seq 60); do
    state=$(node_state)
    case "$state" in idle|mix|alloc) break ;; esac
    [ "$i" = 10 ] && scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
    sleep 0.5
  done
  case "$state" in
    idle|mix|alloc) say "cluster up: node $(hostname -s) is $state; partitions: $(sinfo -h -o %P | tr '\n' ' ')" ;;
    *) say "node did not come up (state '$state'); see /var/log/slurm/slurmctld.log and slurmd.log"; exit 1 ;;
  esac
}

stop() {
  need_root
  for pf in "${PIDS[@]}"; do
    running "$pf" || continue
    pid=$(cat "$pf")
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  done
  say "cluster stopped"
}

status() {
  case "$(node_state)" in idle|mix|alloc) sinfo; exit 0 ;; *) exit 1 ;; esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
