#!/usr/bin/env bash
# End-to-end check of the local control plane: up.sh on a fresh state dir, then
# the server version, the TokenRequest API, the Job controller (a Job gets its
# Pod, which stays Pending: no node), the garbage collector (deleting the Job
# removes the Pod), idempotent up.sh, down.sh. Prints 'N passed, N failed'.
#
# Usage: deploy/local/smoke-test.sh [state-dir]   (default: a fresh temp dir, removed after)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -ge 1 ]]; then
  STATE="$1"
  keep=true
else
  STATE="$(mktemp -d "${TMPDIR:-/tmp}/stowage-smoke.XXXXXX")"
  keep=false
fi

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

cleanup() {
  "$HERE/down.sh" "$STATE" || true
  $keep || rm -rf "$STATE"
}
trap cleanup EXIT

"$HERE/up.sh" "$STATE"
# shellcheck source=/dev/null
source "$STATE/env"
k() { "$KUBECTL" --request-timeout 10s "$@"; }

# poll SECONDS COMMAND...: retry until the command succeeds or time runs out.
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

server_is_134() { k version -o json | grep -q '"gitVersion": "v1\.34\.'; }
check "server reports v1.34.x" server_is_134

token_works() {
  local token
  token="$(k -n default create token default)" || return 1
  [[ "$(k --kubeconfig /dev/null --server "$STOWAGE_APISERVER_URL" \
    --certificate-authority "$STOWAGE_CA_CERT" --token "$token" auth whoami -o jsonpath='{.status.userInfo.username}')" == \
    system:serviceaccount:default:default ]]
}
check "TokenRequest token authenticates as default/default (CA + 127.0.0.1 SAN)" token_works

check "kube-root-ca.crt is published in default" poll 60 k -n default get configmap kube-root-ca.crt

k -n default create job smoke --image=busybox -- true >/dev/null
job_pod_pending() {
  [[ "$(k -n default get pods -l job-name=smoke -o jsonpath='{.items[*].status.phase}')" == Pending ]]
}
check "Job controller creates a Pending pod" poll 60 job_pod_pending

k -n default delete job smoke --wait=true >/dev/null
no_job_pods() { [[ -z "$(k -n default get pods -l job-name=smoke -o name)" ]]; }
check "garbage collector removes the Job's pod" poll 60 no_job_pods

check "up.sh on a running state dir exits 0" "$HERE/up.sh" "$STATE"
check "helm talks to the cluster" "$HELM" list --all-namespaces

printf '%s passed, %s failed\n' "$passed" "$failed"
((failed == 0))
