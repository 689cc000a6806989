#!/usr/bin/env bash
# Stop the control plane that deploy/local/up.sh started in <state-dir>.
# Only the processes named by <state-dir>/pids/*.pid are signalled, and only if
# their command line still refers to <state-dir> (no pid-reuse accidents).
# The state dir (certificates, etcd data, logs) is kept; delete it yourself.
#
# Usage: deploy/local/down.sh <state-dir>
# Environment: STOWAGE_DOWN_TIMEOUT (seconds before SIGKILL, default 30).
set -euo pipefail

log() { printf '[down %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'down.sh: error: %s\n' "$*" >&2
  exit 1
}

[[ $# -eq 1 && -n "$1" ]] || die "usage: $0 <state-dir>"
if [[ ! -d "$1" ]]; then
  log "no state dir '$1'; nothing to stop"
  exit 0
fi
STATE="$(cd "$1" && pwd)"
PIDS="$STATE/pids"
TIMEOUT="${STOWAGE_DOWN_TIMEOUT:-30}"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "STOWAGE_DOWN_TIMEOUT must be a number of seconds, got '$TIMEOUT'"

# ours PID: deploy/local/procs.sh.
# shellcheck source=deploy/local/procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

# The node first (its containers, mounts and network namespace), while the API server
# still answers the kubelet.
if [[ -f "$STATE/node/net.env" ]]; then
  "$(dirname "${BASH_SOURCE[0]}")/node.sh" stop "$STATE"
fi

# Reverse start order: controller-manager, then API server, then etcd.
stopped=0
for name in kube-controller-manager kube-apiserver etcd; do
  f="$PIDS/$name.pid"
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! ours "$pid"; then
    log "$name is not running"
    rm -f "$f"
    continue
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + TIMEOUT))
  while ours "$pid"; do
    if ((SECONDS >= deadline)); then
      log "$name (pid $pid) did not exit after ${TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while ours "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
      ours "$pid" && die "$name (pid $pid) survived SIGKILL"
      break
    fi
    sleep 0.2
  done
  rm -f "$f"
  stopped=$((stopped + 1))
done
if [[ -f "$STATE/node/net.env" ]]; then
  "$(dirname "${BASH_SOURCE[0]}")/node.sh" net-down "$STATE"
fi
log "stopped $stopped process(es) from $STATE"
