#!/usr/bin/env bash
# Start a local Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager) on 127.0.0.1 with random free ports.
#
# Usage: deploy/local/up.sh <state-dir>
#
# Writes into <state-dir>:
#   kubeconfig   admin kubeconfig (client cert in group system:masters)
#   env          shell-sourceable: KUBECONFIG, KUBECTL, HELM, STOWAGE_APISERVER_*,
#                STOWAGE_CA_*, pids...
#   pki/         generated CA, serving/client certificates, service-account keys
#   logs/        etcd.log, kube-apiserver.log, kube-controller-manager.log
#   pids/        pid files used by down.sh
#   etcd/        etcd data
# Running it again on a running state dir reports and exits 0.
# Environment: STOWAGE_CACHE (binary cache root, see build.sh),
#   STOWAGE_UP_TIMEOUT (seconds to wait for readiness, default 180),
#   STOWAGE_UP_CONTROLLER_MANAGER (1 = start kube-controller-manager, the default;
#   0 = etcd and kube-apiserver only: no Job controller, garbage collector or
#   ServiceAccount controller, for benchmarks that act as the node themselves),
#   STOWAGE_UP_NODE (none = no node, the default; kubelet = a real node with containerd,
#   the kubelet and kube-scheduler, in a network namespace of its own: see node.sh),
#   STOWAGE_UP_AUDIT_JOB_CREATES (1 = the API server writes one audit line per Job create
#   to logs/audit-job-creates.log, with microsecond times; benchmarks read when a Job came
#   to exist from it; 0 = no audit log, the default),
#   STOWAGE_UP_PROFILING (1 = kube-apiserver and kube-controller-manager serve Go's
#   /debug/pprof, e.g. `kubectl get --raw '/debug/pprof/profile?seconds=10' > cpu.pprof`,
#   for diagnosing a benchmark; 0 = profiling off, the default).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[up %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'up.sh: error: %s\n' "$*" >&2
  exit 1
}

[[ $# -eq 1 && -n "$1" ]] || die "usage: $0 <state-dir>"
mkdir -p "$1"
STATE="$(cd "$1" && pwd)"
TIMEOUT="${STOWAGE_UP_TIMEOUT:-180}"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "STOWAGE_UP_TIMEOUT must be a number of seconds, got '$TIMEOUT'"
WITH_KCM="${STOWAGE_UP_CONTROLLER_MANAGER:-1}"
[[ "$WITH_KCM" == 0 || "$WITH_KCM" == 1 ]] ||
  die "STOWAGE_UP_CONTROLLER_MANAGER must be 1 (start kube-controller-manager) or 0 (skip it), got '$WITH_KCM'"

WITH_NODE="${STOWAGE_UP_NODE:-none}"
[[ "$WITH_NODE" == none || "$WITH_NODE" == kubelet ]] ||
  die "STOWAGE_UP_NODE must be none (no node) or kubelet (a real node), got '$WITH_NODE'"
[[ "$WITH_NODE" == none || "$WITH_KCM" == 1 ]] ||
  die "STOWAGE_UP_NODE=kubelet needs kube-controller-manager (STOWAGE_UP_CONTROLLER_MANAGER=1)"

AUDIT_JOB_CREATES="${STOWAGE_UP_AUDIT_JOB_CREATES:-0}"
[[ "$AUDIT_JOB_CREATES" == 0 || "$AUDIT_JOB_CREATES" == 1 ]] ||
  die "STOWAGE_UP_AUDIT_JOB_CREATES must be 1 (audit Job creates) or 0 (no audit log), got '$AUDIT_JOB_CREATES'"
PROFILING="${STOWAGE_UP_PROFILING:-0}"
[[ "$PROFILING" == 0 || "$PROFILING" == 1 ]] ||
  die "STOWAGE_UP_PROFILING must be 1 (serve /debug/pprof) or 0 (profiling off), got '$PROFILING'"
PROFILING_FLAG="--profiling=$([[ "$PROFILING" == 1 ]] && echo true || echo false)"

PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
mkdir -p "$PKI" "$LOGS" "$PIDS"

COMPONENTS=(etcd kube-apiserver)
if [[ "$WITH_KCM" == 1 ]]; then COMPONENTS+=(kube-controller-manager); fi
if [[ "$WITH_NODE" == kubelet ]]; then COMPONENTS+=(containerd kubelet kube-scheduler); fi

# One up.sh per state dir at a time (the started processes do not inherit the lock).
exec 8>"$STATE/.up.lock"
flock 8

# pid_alive, how_ended: deploy/local/procs.sh.
# shellcheck source=deploy/local/procs.sh
source "$HERE/procs.sh"

# ---- already running? --------------------------------------------------------------
alive=0
for c in "${COMPONENTS[@]}"; do
  if pid_alive "$c" >/dev/null; then alive=$((alive + 1)); fi
done
if ((alive == ${#COMPONENTS[@]})) && [[ -f "$STATE/env" ]]; then
  # shellcheck source=/dev/null
  source "$STATE/env"
  if "$KUBECTL" --kubeconfig "$STATE/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    log "control plane already running in $STATE (API server $STOWAGE_APISERVER_URL)"
    exit 0
  fi
  log "processes are running in $STATE but /readyz fails; restarting"
fi
if ((alive > 0)); then
  log "stopping leftovers of a previous run in $STATE"
  "$HERE/down.sh" "$STATE"
fi

# ---- tools --------------------------------------------------------------------------
ensure_pkg() { # ensure_pkg COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "'$1' is missing and apt-get is not available; install package '$2'"
  [[ "$(id -u)" == 0 ]] || die "'$1' is missing; install it with: sudo apt-get install -y $2"
  log "installing $2 (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
  }
}
ensure_pkg openssl openssl

BIN="$("$HERE/build.sh" --print-bin-dir)"
ETCD="$BIN/etcd"
APISERVER="$BIN/kube-apiserver"
KCM="$BIN/kube-controller-manager"
KUBECTL="$BIN/kubectl"
HELM="$BIN/helm"

# ---- ports --------------------------------------------------------------------------
# Ports in LISTEN state (hex) from /proc/net/tcp{,6}.
# Every local port in use, in any TCP state (an outgoing connection's port or one in
# TIME_WAIT blocks a bind as surely as a listener does).
used_ports() {
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    awk 'NR > 1 { split($2, a, ":"); print a[2] }'
}
# Ports are drawn below the kernel's ephemeral range, so an outgoing connection opened
# between the check and the bind cannot take them.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
PORT_LOW=20000
PORT_SPAN=$((EPHEMERAL_LOW - PORT_LOW))
((PORT_SPAN > 1000)) || { PORT_LOW=10000; PORT_SPAN=$((EPHEMERAL_LOW - PORT_LOW)); }
declare -A TAKEN=()
port_free() {
  local p="$1" hex
  [[ -z "${TAKEN[$p]:-}" ]] || return 1
  printf -v hex '%04X' "$p"
  ! used_ports | grep -qx "$hex"
}
pick_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((PORT_LOW + RANDOM % PORT_SPAN))
    if port_free "$p"; then
      TAKEN[$p]=1
      printf '%s\n' "$p"
      return 0
    fi
  done
  die "could not find a free TCP port on 127.0.0.1"
}

ETCD_PORT="" ETCD_PEER_PORT="" API_PORT="" KCM_PORT=""
if [[ -f "$STATE/ports" ]]; then
  # Reuse the previous run's ports when they are all still free (etcd keeps its
  # peer URL in its data dir).
  # shellcheck source=/dev/null
  source "$STATE/ports"
  for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$KCM_PORT"; do
    if ! [[ "$p" =~ ^[0-9]+$ ]] || ! port_free "$p"; then
      ETCD_PORT="" ETCD_PEER_PORT="" API_PORT="" KCM_PORT=""
      TAKEN=()
      break
    fi
    TAKEN[$p]=1
  done
fi
if [[ -z "$ETCD_PORT" ]]; then
  ETCD_PORT="$(pick_port)"
  ETCD_PEER_PORT="$(pick_port)"
  API_PORT="$(pick_port)"
  KCM_PORT="$(pick_port)"
fi
printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\nKCM_PORT=%s\n' \
  "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$KCM_PORT" >"$STATE/ports"

# With a real node the API server listens on the host end of the node's link, which
# the kubelet and pods reach (and the host as well); otherwise on loopback.
API_HOST=127.0.0.1
if [[ "$WITH_NODE" == kubelet ]]; then
  "$HERE/node.sh" net "$STATE"
  # shellcheck source=/dev/null
  source "$STATE/node/net.env"
  API_HOST="$NODE_HOST_IP"
fi
API_URL="https://$API_HOST:$API_PORT"

# ---- certificates ------------------------------------------------------------------
# All keys are ECDSA P-256 (fast to generate, supported everywhere here).
genkey() { [[ -f "$1" ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME SUBJECT EXTENSIONS [CA]: key NAME.key, cert NAME.crt signed by CA (default ca).
sign() {
  local name="$1" subj="$2" ext="$3" ca="${4:-ca}"
  [[ -f "$PKI/$name.crt" ]] && return 0
  genkey "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

umask 077
make_ca() { # make_ca NAME CN
  [[ -f "$PKI/$1.crt" ]] && return 0
  genkey "$PKI/$1.key"
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$1.crt" 2>/dev/null
}
[[ -f "$PKI/ca.crt" ]] || log "generating certificates in $PKI"
make_ca ca stowage-local-ca
# Separate CA for the aggregation layer's request-header authentication.
make_ca front-proxy-ca stowage-local-front-proxy-ca
SERVER_EXT="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth"
CLIENT_EXT="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
# A serving cert made before the API server's address changed is made again.
if [[ -f "$PKI/apiserver.crt" ]] &&
  ! openssl x509 -in "$PKI/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$API_HOST\(,\|$\)"; then
  rm -f "$PKI/apiserver.crt" "$PKI/apiserver.key"
fi
sign apiserver "/CN=kube-apiserver" "$SERVER_EXT
subjectAltName=IP:$API_HOST,IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
# etcd also dials its own client port (gRPC gateway) with its serving cert.
sign etcd-server "/CN=etcd" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
sign apiserver-etcd-client "/CN=kube-apiserver-etcd-client" "$CLIENT_EXT"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$CLIENT_EXT"
sign admin "/O=system:masters/CN=stowage-admin" "$CLIENT_EXT"
sign controller-manager "/CN=system:kube-controller-manager" "$CLIENT_EXT"
sign front-proxy-client "/CN=front-proxy-client" "$CLIENT_EXT" front-proxy-ca
if [[ ! -f "$PKI/sa.key" ]]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
umask 022

# ---- kubeconfigs ---------------------------------------------------------------------
write_kubeconfig() { # write_kubeconfig FILE CERT_NAME USER
  local file="$1" cert="$2" user="$3"
  rm -f "$file"
  "$KUBECTL" --kubeconfig "$file" config set-cluster stowage-local --server "$API_URL" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  "$KUBECTL" --kubeconfig "$file" config set-credentials "$user" \
    --client-certificate "$PKI/$cert.crt" --client-key "$PKI/$cert.key" --embed-certs >/dev/null
  "$KUBECTL" --kubeconfig "$file" config set-context stowage-local --cluster stowage-local \
    --user "$user" >/dev/null
  "$KUBECTL" --kubeconfig "$file" config use-context stowage-local >/dev/null
  chmod 600 "$file"
}
write_kubeconfig "$STATE/kubeconfig" admin stowage-admin
write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager system:kube-controller-manager

# ---- processes -------------------------------------------------------------------------
# start NAME COMMAND...: detached (own session, survives this script), logs to logs/NAME.log.
start() {
  local name="$1"
  shift
  log "starting $name"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- &
  printf '%s\n' "$!" >"$PIDS/$name.pid"
}

fail() {
  local name="$1" msg="$2"
  printf 'up.sh: error: %s; last lines of %s:\n' "$msg" "$LOGS/$name.log" >&2
  tail -n 25 "$LOGS/$name.log" >&2 || true
  "$HERE/down.sh" "$STATE" >&2 || true
  exit 1
}

# wait_for NAME DESCRIPTION COMMAND...: poll COMMAND until it succeeds, NAME must stay alive.
wait_for() {
  local name="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" >/dev/null || fail "$name" "$name exited while waiting for $what ($(how_ended "$name"))"
    ((SECONDS < deadline)) || fail "$name" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start etcd "$ETCD" \
  --name stowage \
  --data-dir "$STATE/etcd" \
  --listen-client-urls "https://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "https://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "stowage=http://127.0.0.1:$ETCD_PEER_PORT" \
  --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key" \
  --client-cert-auth --trusted-ca-file "$PKI/ca.crt" \
  --unsafe-no-fsync \
  --log-level warn
wait_for etcd "etcd on port $ETCD_PORT" tcp_open "$ETCD_PORT"

AUDIT_ARGS=()
if [[ "$AUDIT_JOB_CREATES" == 1 ]]; then
  # Job creates only, metadata level (no bodies), one JSON line each when answered.
  # Batch mode writes from a queue, off the request's path; the queue holds 100,000
  # events (a full queue drops events, counted in apiserver_audit_error_total).
  cat >"$STATE/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted, Panic]
rules:
  - level: Metadata
    verbs: [create]
    resources:
      - group: batch
        resources: [jobs]
  - level: None
POLICY
  AUDIT_ARGS=(--audit-policy-file "$STATE/audit-policy.yaml"
    --audit-log-path "$LOGS/audit-job-creates.log" --audit-log-format json
    --audit-log-mode batch --audit-log-batch-buffer-size 100000 --audit-log-maxsize 0)
fi

start kube-apiserver "$APISERVER" \
  --bind-address "$API_HOST" \
  --advertise-address "$API_HOST" \
  --secure-port "$API_PORT" \
  --etcd-servers "https://127.0.0.1:$ETCD_PORT" \
  --etcd-cafile "$PKI/ca.crt" \
  --etcd-certfile "$PKI/apiserver-etcd-client.crt" \
  --etcd-keyfile "$PKI/apiserver-etcd-client.key" \
  --tls-cert-file "$PKI/apiserver.crt" \
  --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User \
  --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
  --proxy-client-key-file "$PKI/front-proxy-client.key" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --enable-aggregator-routing=true \
  --endpoint-reconciler-type none \
  --allow-privileged \
  "$PROFILING_FLAG" \
  "${AUDIT_ARGS[@]}" \
  --v 1
wait_for kube-apiserver "/readyz on $API_URL" \
  "$KUBECTL" --kubeconfig "$STATE/kubeconfig" --request-timeout 5s get --raw /readyz

if [[ "$WITH_KCM" == 1 ]]; then
  start kube-controller-manager "$KCM" \
    --bind-address 127.0.0.1 \
    --secure-port "$KCM_PORT" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --controllers '*' \
    --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" \
    --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --cluster-name stowage-local \
    --leader-elect=false \
    "$PROFILING_FLAG" \
    --v 1
fi

wait_for kube-apiserver "namespace 'default'" \
  "$KUBECTL" --kubeconfig "$STATE/kubeconfig" get namespace default
if [[ "$WITH_KCM" == 1 ]]; then
  wait_for kube-controller-manager "ServiceAccount default/default" \
    "$KUBECTL" --kubeconfig "$STATE/kubeconfig" -n default get serviceaccount default
else
  log "kube-controller-manager not started (STOWAGE_UP_CONTROLLER_MANAGER=0)"
fi

if [[ "$WITH_NODE" == kubelet ]]; then
  STOWAGE_NODE_TIMEOUT="$TIMEOUT" "$HERE/node.sh" start "$STATE" 8>&- ||
    fail kubelet "the node did not start"
fi

# ---- env file ---------------------------------------------------------------------------
{
  printf '# Generated by deploy/local/up.sh; source it: . %q\n' "$STATE/env"
  for kv in \
    "KUBECONFIG=$STATE/kubeconfig" \
    "KUBECTL=$KUBECTL" \
    "HELM=$HELM" \
    "HELM_CACHE_HOME=$STATE/helm/cache" \
    "HELM_CONFIG_HOME=$STATE/helm/config" \
    "HELM_DATA_HOME=$STATE/helm/data" \
    "STOWAGE_STATE_DIR=$STATE" \
    "STOWAGE_BIN_DIR=$BIN" \
    "STOWAGE_APISERVER_URL=$API_URL" \
    "STOWAGE_APISERVER_HOST=$API_HOST" \
    "STOWAGE_APISERVER_PORT=$API_PORT" \
    "STOWAGE_CA_CERT=$PKI/ca.crt" \
    "STOWAGE_CA_KEY=$PKI/ca.key" \
    "STOWAGE_ETCD_URL=https://127.0.0.1:$ETCD_PORT" \
    "STOWAGE_ETCD_PID=$(cat "$PIDS/etcd.pid")" \
    "STOWAGE_APISERVER_PID=$(cat "$PIDS/kube-apiserver.pid")" \
    "STOWAGE_CONTROLLER_MANAGER_PID=$(cat "$PIDS/kube-controller-manager.pid" 2>/dev/null || true)" \
    "STOWAGE_NODE=$WITH_NODE" \
    "STOWAGE_NODE_NAME=$([[ "$WITH_NODE" == kubelet ]] && echo stowage-node || true)" \
    "STOWAGE_NODE_HOST_IP=${NODE_HOST_IP:-}" \
    "STOWAGE_NODE_IP=${NODE_IP:-}" \
    "STOWAGE_NODE_POD_CIDR=${NODE_POD_CIDR:-}" \
    "STOWAGE_NODE_NETNS=${NODE_NETNS:-}" \
    "STOWAGE_CONTAINERD_ADDRESS=$([[ "$WITH_NODE" == kubelet ]] && echo "/run/stowage/$(printf '%s' "$STATE" | sha256sum | cut -c1-8)/containerd.sock" || true)"; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
} >"$STATE/env"

log "control plane ready: $API_URL (server $("$KUBECTL" --kubeconfig "$STATE/kubeconfig" version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n 1))"
log "use it with: . $STATE/env && \"\$KUBECTL\" get ns"
