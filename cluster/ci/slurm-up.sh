#!/usr/bin/env bash
# Bring up a one-node SLURM (munge + slurmctld + slurmd) on a fresh Debian machine, as root.
#
#   cluster/ci/slurm-up.sh      # installs what is missing, starts what is not running,
#                               # waits until `sinfo` shows the node idle
#   cluster/ci/slurm-down.sh    # stops exactly what this script started
#
# Idempotent: when the cluster this script started is already up, it prints
# "phaze-slurm: already up" and exits 0. Otherwise it prints "phaze-slurm: started".
# Exit codes: 0 up, 1 bring-up failed, 3 cannot install (not root / no apt / apt failed).
#
# Settings measured on this machine kind (see docs/infra.md#slurm): no systemd, cgroup v1 without
# a usable freezer, so proctrack/linuxproc, task/none, jobacct_gather/none, no accounting
# daemon; the node line comes from `slurmd -C` so the node never claims more than it has.
set -uo pipefail

STATE_DIR="${PHAZE_SLURM_STATE:-/run/phaze-slurm}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by phaze cluster/ci/slurm-up.sh"
WAIT_S="${PHAZE_SLURM_WAIT_S:-60}"

log() { echo "phaze-slurm: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (installs packages and starts daemons)"
  exit 3
fi

mkdir -p "$STATE_DIR"
STARTED="$STATE_DIR/started"   # lines "name pid" of the daemons this script started
touch "$STARTED"

alive() {  # alive NAME PID: the pid runs a process whose command name is NAME
  local name=$1 pid=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

recorded_pid() { awk -v n="$1" '$1 == n {print $2}' "$STARTED" | tail -n 1; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }

# ---- already up? -----------------------------------------------------------------------
all_ours_alive=1
for d in munged slurmctld slurmd; do
  pid=$(recorded_pid "$d")
  if ! alive "$d" "$pid" && ! pgrep -x "$d" >/dev/null; then all_ours_alive=0; fi
done
if [ "$all_ours_alive" = 1 ] && command -v sinfo >/dev/null && [ "$(node_state)" = idle ]; then
  log "already up"
  echo "already up"
  exit 0
fi

# ---- install (only what is missing) ----------------------------------------------------
need_pkgs=()
command -v munged >/dev/null || need_pkgs+=(munge)
command -v slurmctld >/dev/null || need_pkgs+=(slurmctld)
command -v slurmd >/dev/null || need_pkgs+=(slurmd)
command -v sinfo >/dev/null || need_pkgs+=(slurm-client)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    log "missing ${need_pkgs[*]} and no apt-get to install them"
    exit 3
  fi
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >"$STATE_DIR/apt.log" 2>&1; then
    apt-get update -q >>"$STATE_DIR/apt.log" 2>&1
    if ! apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >>"$STATE_DIR/apt.log" 2>&1; then
      log "apt-get install failed, see $STATE_DIR/apt.log"
      exit 3
    fi
  fi
fi

# ---- munge -----------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge

if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- munged || { log "munged failed to start"; exit 1; }
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  echo "munged $(cat /run/munge/munged.pid)" >>"$STARTED"
fi

# ---- slurm.conf ------------------------------------------------------------------------
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  if [ ! -e "$STATE_DIR/slurm.conf.orig" ]; then
    log "keeping the existing $CONF as $STATE_DIR/slurm.conf.orig (restored by slurm-down.sh)"
    cp -p "$CONF" "$STATE_DIR/slurm.conf.orig"
  fi
fi
host=$(hostname -s)
node_line=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=... RealMemory=...
cat >"$CONF.tmp" <<EOF
$MARKER
ClusterName=phaze-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"

# ---- daemons ---------------------------------------------------------------------------
if ! pgrep -x slurmctld >/dev/null; then
  slurmctld -c -i || { log "slurmctld failed to start, see /var/log/slurm/slurmctld.log"; exit 1; }
  for _ in $(seq 50); do [ -s /run/slurmctld.pid ] && break; sleep 0.1; done
  echo "slurmctld $(cat /run/slurmctld.pid)" >>"$STARTED"
fi
if ! pgrep -x slurmd >/dev/null; then
  slurmd || { log "slurmd failed to start, see /var/log/slurm/slurmd.log"; exit 1; }
  for _ in $(seq 50); do [ -s /run/slurmd.pid ] && break; sleep 0.1; done
  echo "slurmd $(cat /run/slurmd.pid)" >>"$STARTED"
fi

# ---- wait for the node -----------------------------------------------------------------
deadline=$((SECONDS + WAIT_S))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
  state=$(node_state)
  case "$state" in
    idle) log "started (node $host idle)"; echo "started"; exit 0 ;;
    down*|drain*|inval*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 ;;
  esac
  sleep 0.5
done
log "node $host not idle after ${WAIT_S}s (state: ${state:-none}); see /var/log/slurm/"
exit 1
