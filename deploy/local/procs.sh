# Bookkeeping of the processes up.sh and node.sh start and down.sh stops, sourced by
# all three. The caller sets STATE (the state dir, an absolute path) and PIDS (the dir
# of its pid files, `<name>.pid`).
#
# A process is "ours" when its command line names a path under $STATE: a pid file left
# by an earlier run may name a pid that now belongs to something else.

# How long a live process whose command line does not name $STATE yet is looked at
# again before it counts as not ours. A process shows its parent's command line between
# fork and exec, and an empty one inside an exec; on a loaded machine that lasts long
# enough for one look to miss it (a kubelet was once reported exited while it started).
PROCS_SETTLE_TENTHS="${PROCS_SETTLE_TENTHS:-20}"

# proc_state PID -> the one-letter state of PID (R, S, D, Z, ...), nothing if it is gone.
proc_state() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  printf '%s\n' "${stat%% *}"
}

# ours PID -> 0 if PID is a live process started for this state dir.
ours() {
  local pid="$1" tries=0 state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  while :; do
    state="$(proc_state "$pid")"
    # Gone, or exited and waiting to be reaped.
    [[ -n "$state" && "$state" != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE/" && return 0
    ((++tries <= PROCS_SETTLE_TENTHS)) || return 1
    sleep 0.1
  done
}

# pid_alive NAME -> prints the pid if NAME's pid file names a live process of ours.
pid_alive() {
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  ours "$pid" || return 1
  printf '%s\n' "$pid"
}

# how_ended NAME -> why NAME's process is not alive, for an error message: its exit
# status or signal when this shell started it, otherwise what the pid is now.
how_ended() {
  local f="$PIDS/$1.pid" pid state status
  [[ -f "$f" ]] || {
    printf 'it has no pid file (%s)\n' "$f"
    return 0
  }
  pid="$(cat "$f")"
  state="$(proc_state "$pid")"
  if [[ -n "$state" && "$state" != Z ]]; then
    printf 'pid %s now runs something else: %s\n' "$pid" \
      "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)"
    return 0
  fi
  status=0
  wait "$pid" 2>/dev/null || status=$?
  if ((status > 128 && status < 128 + 65)); then
    printf 'pid %s was killed by signal %s\n' "$pid" "$(kill -l "$((status - 128))")"
  elif ((status == 127)); then
    printf 'pid %s is gone (exit status 127, or not started by this shell)\n' "$pid"
  else
    printf 'pid %s exited with status %s\n' "$pid" "$status"
  fi
}
