#!/usr/bin/env bash
# Stop exactly the daemons cluster/ci/slurm-up.sh started (recorded by pid in its state
# dir), after cancelling the jobs of that cluster. Daemons that were already running
# before slurm-up.sh are left alone. Safe to run twice.
set -uo pipefail

STATE_DIR="${PHAZE_SLURM_STATE:-/run/phaze-slurm}"
STARTED="$STATE_DIR/started"
CONF=/etc/slurm/slurm.conf

log() { echo "phaze-slurm: $*" >&2; }

if [ ! -s "$STARTED" ]; then
  log "nothing recorded in $STARTED: nothing to stop"
  exit 0
fi

alive() {
  local name=$1 pid=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

# Cancel this cluster's jobs first so no job step outlives slurmd.
if grep -q '^slurmctld ' "$STARTED" && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o '%i' 2>/dev/null)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 20); do [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

# Stop in reverse start order: slurmd, slurmctld, munged.
for name in slurmd slurmctld munged; do
  awk -v n="$name" '$1 == n {print $2}' "$STARTED" | while read -r pid; do
    if alive "$name" "$pid"; then
      kill -TERM "$pid"
      for _ in $(seq 100); do alive "$name" "$pid" || break; sleep 0.1; done
      if alive "$name" "$pid"; then
        log "$name ($pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid"
      fi
      log "stopped $name ($pid)"
    fi
  done
done

if [ -e "$STATE_DIR/slurm.conf.orig" ]; then
  cp -p "$STATE_DIR/slurm.conf.orig" "$CONF" && rm -f "$STATE_DIR/slurm.conf.orig"
  log "restored the original $CONF"
fi
rm -f "$STARTED"
exit 0
