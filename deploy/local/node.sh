#!/usr/bin/env bash
# A real Kubernetes node next to the local control plane: containerd + runc, the kubelet,
# kube-scheduler, a bridge pod network and a locally built pause image. Nothing is pulled.
#
# Usage: deploy/local/node.sh net|start|stop|net-down|status <state-dir>
#   net     create the node's network namespace and its link to the host (before the
#           API server starts: the API server listens on the host end of that link)
#   start   start containerd, kubelet and kube-scheduler; wait for the Node to be Ready
#   stop    stop them, remove every container and every mount under the node's dirs
#   net-down  remove the network namespace and the link (after the API server stopped)
#   status  print the node's addresses (the env lines up.sh records)
# up.sh and down.sh call it when STOWAGE_UP_NODE=kubelet; see deploy/local/README.md.
#
# The network: each state dir gets its own namespace `stowage-<hash>` holding containerd,
# the kubelet and every pod. A veth pair links it to the host: host 10.213.<i>.1, node
# 10.213.<i>.2 (the Node's InternalIP, where the API server reaches the kubelet for
# `kubectl logs/exec`). Pods get 10.214.<i>.0/24 on a bridge inside the namespace. A
# FORWARD rule in the namespace lets pods reach the host's end of the link and nothing
# beyond it.
# In the namespace, the `kubernetes` Service (10.0.0.1:443) is DNATed to the API server.
# Environment: STOWAGE_NODE_TIMEOUT (seconds to wait for Ready, default 180).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'node.sh: error: %s\n' "$*" >&2
  exit 1
}

[[ $# -eq 2 && -n "$2" ]] || die "usage: $0 net|start|stop|net-down|status <state-dir>"
CMD="$1"
mkdir -p "$2"
STATE="$(cd "$2" && pwd)"
NODE="$STATE/node"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
PKI="$STATE/pki"
TIMEOUT="${STOWAGE_NODE_TIMEOUT:-180}"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "STOWAGE_NODE_TIMEOUT must be a number of seconds, got '$TIMEOUT'"
HASH="$(printf '%s' "$STATE" | sha256sum | cut -c1-8)"
NETNS="stowage-$HASH"
HOST_IF="stw$HASH"
# Short paths: unix socket paths are limited to 107 bytes.
RUN="/run/stowage/$HASH"
SOCK="$RUN/containerd.sock"
NODE_NAME="stowage-node"
mkdir -p "$NODE" "$LOGS" "$PIDS"

[[ "$(id -u)" == 0 ]] || die "a real node needs root (network namespaces, mounts, cgroups)"

ensure_pkg() { # ensure_pkg COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "'$1' is missing and apt-get is not available; install package '$2'"
  log "installing $2 (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
  }
}

in_ns() { ip netns exec "$NETNS" "$@"; }

# ---- net ------------------------------------------------------------------------------
# The link's index i: kept in node/net.env; a new state dir takes the first free one
# after its hash, so two state dirs never share a subnet.
net_index() {
  if [[ -f "$NODE/net.env" ]]; then
    # shellcheck source=/dev/null
    source "$NODE/net.env"
    printf '%s\n' "$NODE_NET_INDEX"
    return
  fi
  local start=$((0x$HASH % 250 + 1)) i k
  for ((k = 0; k < 250; k++)); do
    i=$(((start - 1 + k) % 250 + 1))
    if ! ip -4 -o addr show | grep -qE " 10\.21[34]\.$i\."; then
      printf '%s\n' "$i"
      return
    fi
  done
  die "no free 10.213.x.0/24 subnet for the node's link"
}

net_up() {
  ensure_pkg ip iproute2
  ensure_pkg iptables iptables
  # One state dir at a time picks and claims a subnet.
  mkdir -p /run/stowage
  exec 7>/run/stowage/.net.lock
  flock 7
  local i
  i="$(net_index)"
  HOST_IP="10.213.$i.1" NODE_IP="10.213.$i.2" POD_CIDR="10.214.$i.0/24"
  if ! ip netns list | grep -qw "$NETNS"; then
    log "creating network namespace $NETNS (host $HOST_IP, node $NODE_IP, pods $POD_CIDR)"
    ip netns add "$NETNS"
  fi
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name "stn$HASH" netns "$NETNS"
    ip -n "$NETNS" link set "stn$HASH" name eth0
    ip addr add "$HOST_IP/24" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    ip -n "$NETNS" addr add "$NODE_IP/24" dev eth0
    ip -n "$NETNS" link set eth0 up
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" route add default via "$HOST_IP"
    # Answers from the host to pods go back through the node (removed with the link).
    ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_IF"
  fi
  in_ns sysctl -qw net.ipv4.ip_forward=1
  printf 'NODE_NET_INDEX=%s\nNODE_HOST_IP=%s\nNODE_IP=%s\nNODE_POD_CIDR=%s\nNODE_NETNS=%s\n' \
    "$i" "$HOST_IP" "$NODE_IP" "$POD_CIDR" "$NETNS" >"$NODE/net.env"
  exec 7>&-
}

# ---- start ----------------------------------------------------------------------------
# pid_alive, how_ended: deploy/local/procs.sh.
# shellcheck source=deploy/local/procs.sh
source "$HERE/procs.sh"

start() { # start NAME COMMAND...: detached, in the node's network namespace
  local name="$1"
  shift
  if pid_alive "$name" >/dev/null; then return; fi
  log "starting $name"
  setsid nsenter --net="/run/netns/$NETNS" -- "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- 9>&- &
  printf '%s\n' "$!" >"$PIDS/$name.pid"
}

fail() {
  printf 'node.sh: error: %s; last lines of %s:\n' "$2" "$LOGS/$1.log" >&2
  tail -n 25 "$LOGS/$1.log" >&2 || true
  exit 1
}

wait_for() { # wait_for NAME WHAT COMMAND...
  local name="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" >/dev/null || fail "$name" "$name exited while waiting for $what ($(how_ended "$name"))"
    ((SECONDS < deadline)) || fail "$name" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
}

# sign NAME SUBJECT EXTENSIONS: a certificate of the cluster's CA (made by up.sh).
sign() {
  local name="$1" subj="$2" ext="$3"
  [[ -f "$PKI/$name.crt" ]] && return 0
  (
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -CAcreateserial -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
  )
}

kubeconfig() { # kubeconfig FILE CERT USER
  rm -f "$1"
  "$KUBECTL" --kubeconfig "$1" config set-cluster local --server "https://$NODE_HOST_IP:$API_PORT" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  "$KUBECTL" --kubeconfig "$1" config set-credentials "$3" \
    --client-certificate "$PKI/$2.crt" --client-key "$PKI/$2.key" --embed-certs >/dev/null
  "$KUBECTL" --kubeconfig "$1" config set-context local --cluster local --user "$3" >/dev/null
  "$KUBECTL" --kubeconfig "$1" config use-context local >/dev/null
  chmod 600 "$1"
}

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

node_start() {
  [[ -f "$NODE/net.env" ]] || die "no node network in $STATE; run '$0 net $STATE' before the API server starts"
  # shellcheck source=/dev/null
  source "$NODE/net.env"
  # shellcheck source=/dev/null
  source "$STATE/ports"
  local bin
  bin="$("$HERE/build.sh" --print-bin-dir)"
  KUBECTL="$bin/kubectl"
  ensure_pkg containerd containerd
  ensure_pkg runc runc
  [[ -x /usr/lib/cni/bridge ]] || ensure_pkg /usr/lib/cni/bridge containernetworking-plugins
  ensure_pkg openssl openssl
  mkdir -p "$RUN" "$NODE/containerd" "$NODE/cni/net.d" "$NODE/kubelet" "$NODE/pod-logs"
  local pause_image
  pause_image="$("$HERE/images.sh" build pause)"

  # containerd: its own root, state and socket; a negative oom_score_adj is not allowed
  # here, hence restrict_oom_score_adj; CNI namespaces under its state dir so `stop`
  # finds them.
  cat >"$NODE/containerd/config.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$RUN/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
EOF
  cat >"$NODE/cni/net.d/10-stowage.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "stowage",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$NODE_POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$NODE/cni/ipam"
      }
    }
  ]
}
EOF
  # The kubernetes Service, for pods and host-network pods of the node.
  local chain
  for chain in PREROUTING OUTPUT; do
    in_ns iptables -t nat -C "$chain" -d 10.0.0.1/32 -p tcp --dport 443 \
      -j DNAT --to-destination "$NODE_HOST_IP:$API_PORT" 2>/dev/null ||
      in_ns iptables -t nat -A "$chain" -d 10.0.0.1/32 -p tcp --dport 443 \
        -j DNAT --to-destination "$NODE_HOST_IP:$API_PORT"
  done

  # Pods reach the host's end of the link and nothing beyond it, whether the host forwards
  # or not: their traffic stays in the namespaces this run made.
  in_ns iptables -C FORWARD -o eth0 ! -d "$NODE_HOST_IP/32" -j DROP 2>/dev/null ||
    in_ns iptables -A FORWARD -o eth0 ! -d "$NODE_HOST_IP/32" -j DROP

  start containerd containerd --config "$NODE/containerd/config.toml"
  wait_for containerd "its socket $SOCK" ctr_ version

  "$HERE/images.sh" import "$STATE" pause >/dev/null

  CLIENT_EXT="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$CLIENT_EXT"
  sign kubelet-serving "/CN=$NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
  sign scheduler "/CN=system:kube-scheduler" "$CLIENT_EXT"
  kubeconfig "$NODE/kubelet.kubeconfig" kubelet "system:node:$NODE_NAME"
  kubeconfig "$STATE/scheduler.kubeconfig" scheduler system:kube-scheduler

  cat >"$NODE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
podLogsDir: $NODE/pod-logs
resolvConf: ""
makeIPTablesUtilChains: false
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
maxPods: 110
EOF
  start kubelet "$bin/kubelet" \
    --config "$NODE/kubelet.yaml" \
    --kubeconfig "$NODE/kubelet.kubeconfig" \
    --root-dir "$NODE/kubelet" \
    --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" \
    --v 1
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port 0 \
    --leader-elect=false \
    --profiling=false \
    --v 1
  wait_for kubelet "Node $NODE_NAME to be Ready" node_ready
  log "node $NODE_NAME ready (InternalIP $NODE_IP, pods $NODE_POD_CIDR, containerd $SOCK)"
}

node_ready() {
  [[ "$("$KUBECTL" --kubeconfig "$STATE/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# ---- stop -----------------------------------------------------------------------------
stop_pid() { # stop_pid NAME: SIGTERM, then SIGKILL after 15 s
  local pid
  pid="$(pid_alive "$1")" || {
    rm -f "$PIDS/$1.pid"
    return 0
  }
  log "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDS/$1.pid"
}

node_stop() {
  stop_pid kube-scheduler
  stop_pid kubelet
  # Every container of this containerd, then its shims (they outlive containerd).
  if pid_alive containerd >/dev/null; then
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 1
    for id in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK( |$)" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts left under the node's directories (pod volumes, root file systems, network
  # namespaces), deepest first, so deleting the state dir never reaches through one.
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v a="$NODE/" -v b="$RUN/" '{ gsub(/\\040/, " ", $5); if (index($5, a) == 1 || index($5, b) == 1) print length($5) " " $5 }' /proc/self/mountinfo |
    sort -rn | cut -d' ' -f2-)
  rm -rf "$RUN"
  # Container cgroups are removed with their containers; their parent stays when empty.
  rmdir /sys/fs/cgroup/*/k8s.io 2>/dev/null || true
}

# After the API server has stopped: it listens on the host end of the link, and its own
# loopback client hangs its shutdown when that address goes first.
net_down() {
  if ip netns list 2>/dev/null | grep -qw "$NETNS"; then
    log "removing network namespace $NETNS and its link $HOST_IF"
    ip netns delete "$NETNS" || true
  fi
  ip link delete "$HOST_IF" 2>/dev/null || true
}

case "$CMD" in
  net) net_up ;;
  start) node_start ;;
  stop) node_stop ;;
  net-down) net_down ;;
  status)
    [[ -f "$NODE/net.env" ]] || die "no node in $STATE"
    cat "$NODE/net.env"
    ;;
  *) die "unknown command '$CMD' (net, start, stop, net-down or status)" ;;
esac
