#!/usr/bin/env bash
# Installs stowage on a real local control plane with a real node (deploy/local/up.sh with
# STOWAGE_UP_NODE=kubelet: containerd and the kubelet; the stowage image is built here from
# the local binary and imported, never pulled), and checks what a user would:
#   1. every manifest `helm template` renders (default and other values) is accepted by
#      `kubectl apply --dry-run=server`, and so is deploy/examples/*.yaml;
#   2. `helm install`: the operator becomes ready, an http BackupTarget (a file served by
#      `python3 -m http.server` on the host's end of the node's link) backs up on
#      `stowage.dev/backup-now`, and the artifact on the claim (a local PersistentVolume) is
#      byte-identical to the file, with the status' sha256;
#   3. `helm upgrade` with changed values: the Deployment's flags change, the new pod runs,
#      allowedPlugins is enforced, another backup succeeds;
#   4. `helm uninstall`: the operator is gone, the CRDs and the BackupTargets are kept,
#      and a new `helm install` adopts them;
#   5. `kubectl apply -k deploy/` (through an overlay that only sets the image, and the
#      runner image flag, to the one built here): the operator runs and a backup succeeds.
# Prints one ok/FAIL line per check and exits non-zero on any failure.
#
# Needs root (the node), deploy/local/build.sh binaries, and `stowage` built (cargo build
# -p stowage --bin stowage).
# Environment: STOWAGE_BIN_DIR_RUST (dir with the binary; default
#   $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/debug), KEEP_STATE=1 keeps the cluster up.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${STOWAGE_CACHE:-$HOME/.cache/stowage}"
RUST_BIN="${STOWAGE_BIN_DIR_RUST:-${CARGO_TARGET_DIR:-$CACHE/target}/x86_64-unknown-linux-gnu/debug}"
STOWAGE="$RUST_BIN/stowage"
[[ -x "$STOWAGE" ]] || {
  echo "install.sh: $STOWAGE is missing; build it: cargo build -p stowage --bin stowage" >&2
  exit 1
}

STATE="$(mktemp -d "${TMPDIR:-/tmp}/stowage-chart.XXXXXX")"
CP="$STATE/cp"
VOLUMES="$STATE/volumes"
WORK="$STATE/work"
mkdir -p "$WORK"
pids=()

passed=0
failed=0
check() { # check DESCRIPTION COMMAND...
  local what="$1"
  shift
  if "$@"; then
    printf 'ok   - %s\n' "$what"
    passed=$((passed + 1))
  else
    printf 'FAIL - %s\n' "$what"
    failed=$((failed + 1))
  fi
}
log() { printf '[chart-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
  local status=$?
  if ((failed > 0 || status != 0)); then
    log "diagnostics (state dir $STATE):"
    k get pods,jobs -A -o wide 2>/dev/null | tail -n 20 >&2 || true
    local pod
    for pod in $(k get pods -A -o 'jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{end}' 2>/dev/null); do
      echo "--- kubectl logs $pod" >&2
      k -n "${pod%%/*}" logs "${pod#*/}" --all-containers --tail 15 >&2 2>&1 || true
    done
    tail -n 15 "$CP/logs/kubelet.log" >&2 2>/dev/null || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ "${KEEP_STATE:-}" == 1 ]]; then
    log "kept $STATE (stop with: deploy/local/down.sh $CP)"
  else
    "$REPO/deploy/local/down.sh" "$CP" >/dev/null 2>&1 || true
    rm -rf "$STATE" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# free_port [ADDRESS]: a TCP port nothing listens on.
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"
}

# poll SECONDS COMMAND...: retry until the command succeeds or time runs out.
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# ---- cluster + real node + HTTP server ----------------------------------------------------
log "starting the control plane and a real node in $CP"
# A second attempt covers a port taken by another test between choosing and binding it.
STOWAGE_UP_NODE=kubelet "$REPO/deploy/local/up.sh" "$CP" >"$STATE/up.log" 2>&1 ||
  STOWAGE_UP_NODE=kubelet "$REPO/deploy/local/up.sh" "$CP" >>"$STATE/up.log" 2>&1 || {
  cat "$STATE/up.log" >&2
  exit 1
}
# shellcheck source=/dev/null
source "$CP/env"
k() { "$KUBECTL" --request-timeout 20s "$@"; }
H() { "$HELM" "$@"; }

IMAGE="$("$REPO/deploy/local/images.sh" import "$CP" "stowage=$STOWAGE" 2>"$STATE/images.log")" || {
  cat "$STATE/images.log" >&2
  echo "the stowage image could not be built or imported" >&2
  exit 1
}
log "image $IMAGE in the node's containerd"

mkdir -p "$WORK/www"
head -c 300000 /dev/urandom >"$WORK/www/payload.bin"
PAYLOAD_SHA="$(sha256sum "$WORK/www/payload.bin" | cut -d' ' -f1)"
# Where pods reach this host: the host's end of the node's link.
HTTP_HOST="$STOWAGE_NODE_HOST_IP"
HTTP_PORT="$(free_port "$HTTP_HOST")"
(cd "$WORK/www" && exec python3 -m http.server --bind "$HTTP_HOST" "$HTTP_PORT") >"$STATE/http.log" 2>&1 &
pids+=("$!")
poll 30 curl -sf -o /dev/null "http://$HTTP_HOST:$HTTP_PORT/payload.bin" || {
  echo "the HTTP server did not start" >&2
  exit 1
}

# ---- 1. server-side dry run of everything the chart renders ---------------------------
k create namespace shop >/dev/null
k create namespace web >/dev/null
k create namespace monitoring >/dev/null
# Minimal prometheus-operator CRDs so the API server knows the kinds (schema not checked).
for kind in ServiceMonitor PrometheusRule; do
  plural="$(tr '[:upper:]' '[:lower:]' <<<"$kind")s"
  k apply -f - >/dev/null <<EOF
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: $plural.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: $kind, plural: $plural}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
EOF
done
k wait --for condition=Established crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com >/dev/null
k create namespace stowage-system >/dev/null

dry_run() { # dry_run NAME HELM_ARGS...
  local name="$1"
  shift
  H template stowage "$REPO/charts/stowage" -n stowage-system "$@" >"$WORK/dry-$name.yaml" &&
    k apply --dry-run=server -f "$WORK/dry-$name.yaml" >"$WORK/dry-$name.out" 2>&1 ||
    {
      cat "$WORK/dry-$name.out" >&2
      return 1
    }
}
check "dry-run=server accepts the default rendering" dry_run default
check "dry-run=server accepts watchNamespaces, 2 replicas, PDB" dry_run ns \
  --set 'watchNamespaces={shop,web}' --set replicas=2 --set 'runner.serviceAccount.namespaces={monitoring}'
check "dry-run=server accepts ServiceMonitor, PrometheusRule, dashboard, NetworkPolicy" dry_run monitoring \
  --api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions monitoring.coreos.com/v1/PrometheusRule \
  --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
  --set grafanaDashboard.enabled=true --set networkPolicy.enabled=true --set 'networkPolicy.apiServerCIDRs={127.0.0.1/32}'

# ---- 2. helm install + a backup -------------------------------------------------------
k create namespace demo >/dev/null
# No provisioner on the local node: a local volume made for the claim.
CLAIM_DIR="$VOLUMES/demo-backups"
mkdir -p "$CLAIM_DIR"
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-backups}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: demo, name: backups}
  local: {path: $CLAIM_DIR}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$STOWAGE_NODE_NAME]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: backups, namespace: demo}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: demo-backups
  resources: {requests: {storage: 1Gi}}
EOF
# Client-side dry runs of the examples need their CRDs: install first, then check them.
install() {
  H upgrade --install stowage "$REPO/charts/stowage" -n stowage-system \
    --set "image.repository=${IMAGE%:*}" --set "image.tag=${IMAGE##*:}" --set logFormat=text \
    --set 'runner.serviceAccount.namespaces={demo}' "$@" >"$WORK/helm.out" 2>&1 ||
    {
      cat "$WORK/helm.out" >&2
      return 1
    }
}
deployment_ready() { # deployment_ready NAMESPACE NAME
  local want have
  want="$(k -n "$1" get deployment "$2" -o 'jsonpath={.spec.replicas}')" || return 1
  have="$(k -n "$1" get deployment "$2" -o 'jsonpath={.status.readyReplicas}')" || return 1
  [[ -n "$have" && "$have" == "$want" ]] &&
    [[ "$(k -n "$1" get deployment "$2" -o 'jsonpath={.status.updatedReplicas}')" == "$want" ]] &&
    [[ -z "$(k -n "$1" get deployment "$2" -o 'jsonpath={.status.unavailableReplicas}')" ]]
}
# metrics_served: the operator pod's /readyz answers 200 and /metrics is OpenMetrics text
# (at the pod's address: the host routes the node's pod network).
metrics_served() {
  local ip
  ip="$(k -n stowage-system get pods -l app.kubernetes.io/name=stowage --field-selector status.phase=Running \
    -o 'jsonpath={.items[0].status.podIP}')" || return 1
  [[ -n "$ip" ]] &&
    curl -sf -o /dev/null "http://$ip:8080/readyz" && curl -sf "http://$ip:8080/metrics" | grep -q '^# EOF'
}

check "helm install succeeds" install
check "the operator Deployment becomes ready" poll 180 deployment_ready stowage-system stowage
check "the operator serves /readyz and /metrics" poll 60 metrics_served
check "the CRDs carry helm.sh/resource-policy: keep" \
  test "$(k get crd backuptargets.stowage.dev -o 'jsonpath={.metadata.annotations.helm\.sh/resource-policy}')" = keep
check "the runner ServiceAccount exists in namespace demo" k -n demo get serviceaccount stowage-runner

examples_valid() {
  local f ok=0
  for f in "$REPO"/deploy/examples/*.yaml; do
    if ! sed 's/namespace: [a-z-]*/namespace: shop/' "$f" | k apply --dry-run=server -f - >"$WORK/example.out" 2>&1; then
      echo "$f: $(cat "$WORK/example.out")" >&2
      ok=1
    fi
  done
  return "$ok"
}
check "dry-run=server accepts every deploy/examples/*.yaml" examples_valid

http_target() { # http_target NAME
  k apply -f - >/dev/null <<EOF
apiVersion: stowage.dev/v1alpha1
kind: BackupTarget
metadata: {name: $1, namespace: demo}
spec:
  http:
    url: http://$HTTP_HOST:$HTTP_PORT/payload.bin
    expectedStatus: 200
  storage: {claimName: backups}
  compression: none
EOF
}

# backup_now NAMESPACE TARGET: annotate stowage.dev/backup-now with a new token and wait
# until that run finished (the status handled the token and its lastBackup names a Job
# other than the previous one); succeed if it succeeded. Prints lastBackup as JSON.
backup_now() {
  local ns="$1" target="$2" token deadline previous rc
  previous="$(k -n "$ns" get backuptarget "$target" -o 'jsonpath={.status.lastBackup.job}')" || return 1
  token="t$(date +%s%N)"
  k -n "$ns" annotate backuptarget "$target" "stowage.dev/backup-now=$token" --overwrite >/dev/null || return 1
  deadline=$((SECONDS + 240))
  while ((SECONDS < deadline)); do
    k -n "$ns" get backuptarget "$target" -o json >"$WORK/target.json" 2>/dev/null || true
    set +e
    python3 - "$token" "$previous" "$WORK/target.json" <<'PY'
import json, sys
token, previous, path = sys.argv[1:4]
try:
    st = json.load(open(path)).get("status") or {}
except Exception:
    sys.exit(2)
last = st.get("lastBackup") or {}
if st.get("lastHandledBackupNow") != token or not last.get("completionTime") or last.get("job", "") in ("", previous):
    sys.exit(2)  # still running
print(json.dumps(last))
sys.exit(0 if last.get("outcome") == "Succeeded" else 1)
PY
    rc=$?
    set -e
    case $rc in
      0) return 0 ;;
      1)
        echo "backup of $ns/$target failed: $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["status"]))' "$WORK/target.json")" >&2
        return 1
        ;;
    esac
    sleep 2
  done
  echo "backup of $ns/$target did not finish in time; last status: $(head -c 3000 "$WORK/target.json" 2>/dev/null)" >&2
  return 1
}

# artifact_matches FILE_WITH_LASTBACKUP_JSON: the artifact on the claim is the payload and
# its sha256 is the one in the status.
artifact_matches() {
  local rel sha path
  rel="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["artifact"])' "$1")" || return 1
  sha="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$1")" || return 1
  path="$CLAIM_DIR/$rel"
  [[ -f "$path" ]] || {
    echo "artifact $path missing" >&2
    return 1
  }
  [[ -f "$path.meta.json" ]] || {
    echo "sidecar $path.meta.json missing" >&2
    return 1
  }
  [[ "$(sha256sum "$path" | cut -d' ' -f1)" == "$PAYLOAD_SHA" && "$sha" == "$PAYLOAD_SHA" ]] || {
    echo "artifact $path: sha256 $(sha256sum "$path" | cut -d' ' -f1), status $sha, payload $PAYLOAD_SHA" >&2
    return 1
  }
}
backup_and_verify() { # backup_and_verify TARGET
  backup_now demo "$1" >"$WORK/last-$1.json" && artifact_matches "$WORK/last-$1.json"
}

http_target web-export
check "helm install: an http backup completes and its artifact is the served file" backup_and_verify web-export

# ---- 3. helm upgrade with changed values ------------------------------------------------
old_pod="$(k -n stowage-system get pods -l app.kubernetes.io/name=stowage -o 'jsonpath={.items[0].metadata.name}')"
check "helm upgrade (logFormat=json, allowedPlugins={http}, backoffLimit=1) succeeds" \
  install --set logFormat=json --set 'allowedPlugins={http}' --set runner.job.backoffLimit=1
args_changed() {
  local a
  a="$(k -n stowage-system get deployment stowage -o 'jsonpath={.spec.template.spec.containers[0].args}')"
  [[ "$a" == *'--log-format=json'* && "$a" == *'--allowed-plugins=http'* && "$a" == *'--job-backoff-limit=1'* ]]
}
check "the upgraded Deployment has the new flags" args_changed
old_pod_gone() { ! k -n stowage-system get pod "$old_pod" >/dev/null 2>&1; }
check "the upgrade replaced the operator pod and the new one is ready" \
  poll 180 bash -c "$(declare -f k deployment_ready old_pod_gone); KUBECTL='$KUBECTL' old_pod='$old_pod'; old_pod_gone && deployment_ready stowage-system stowage"
plugin_refused() {
  [[ "$(k -n demo get backuptarget pg -o 'jsonpath={.status.conditions[?(@.type=="ConfigValid")].reason}')" == PluginNotAllowed ]]
}
k -n demo create secret generic pg-password --from-literal=password=unused >/dev/null
k apply -f - >/dev/null <<EOF
apiVersion: stowage.dev/v1alpha1
kind: BackupTarget
metadata: {name: pg, namespace: demo}
spec:
  postgres: {host: 127.0.0.1, database: x, username: x, passwordSecretRef: {name: pg-password, key: password}}
  storage: {claimName: backups}
EOF
check "after the upgrade a postgres target is refused (PluginNotAllowed)" poll 90 plugin_refused
check "after the upgrade another http backup completes" backup_and_verify web-export

# ---- 4. helm uninstall keeps the CRDs and the targets; reinstall adopts them ---------------
uninstall() { H uninstall stowage -n stowage-system --wait >"$WORK/helm.out" 2>&1 || { cat "$WORK/helm.out" >&2; return 1; }; }
check "helm uninstall succeeds" uninstall
operator_gone() { ! k -n stowage-system get deployment stowage >/dev/null 2>&1 && [[ -z "$(k -n stowage-system get pods -o name)" ]]; }
check "helm uninstall removes the operator" poll 120 operator_gone
check "helm uninstall keeps the CRDs and the BackupTargets" k -n demo get backuptarget web-export
check "helm install again adopts the kept CRDs" install
check "the reinstalled operator becomes ready" poll 180 deployment_ready stowage-system stowage
check "the reinstalled operator backs up" backup_and_verify web-export
check "helm uninstall (again) succeeds" uninstall
check "the operator is gone again" poll 120 operator_gone

# ---- 5. kubectl apply -k deploy/ --------------------------------------------------------
mkdir -p "$WORK/overlay"
cat >"$WORK/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$REPO/deploy" "$WORK/overlay")
images:
  - name: ghcr.io/stowage-dev/stowage
    newName: ${IMAGE%:*}
    newTag: ${IMAGE##*:}
# The runner image is a flag, which an images: entry does not rewrite.
patches:
  - target: {kind: Deployment, name: stowage}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/args/1
        value: --runner-image=$IMAGE
EOF
kustomize_args_ok() { k kustomize "$REPO/deploy" | grep -q -- '--bind-address=0.0.0.0:8080'; }
check "deploy/ renders with the metrics bind address" kustomize_args_ok
apply_k() { k apply -k "$WORK/overlay" >"$WORK/kustomize.out" 2>&1 || { cat "$WORK/kustomize.out" >&2; return 1; }; }
check "kubectl apply -k deploy/ (image overlay) succeeds" apply_k
check "the kustomize operator Deployment becomes ready" poll 180 deployment_ready stowage-system stowage
check "the kustomize operator serves /metrics" poll 60 metrics_served
# With kustomize nobody creates the runner's ServiceAccount (helm uninstall removed the
# chart's): the documented example does.
sa_example() { sed 's/namespace: shop/namespace: demo/' "$REPO/deploy/examples/runner-serviceaccount.yaml" | k apply -f - >/dev/null; }
check "deploy/examples/runner-serviceaccount.yaml creates the runner's ServiceAccount" sa_example
check "the kustomize operator backs up" backup_and_verify web-export
delete_k() { k delete -k "$WORK/overlay" --wait=false >"$WORK/kustomize.out" 2>&1 || { cat "$WORK/kustomize.out" >&2; return 1; }; }
check "kubectl delete -k deploy/ succeeds" delete_k

echo "chart install checks: $passed ok, $failed failing"
((failed == 0))
