#!/usr/bin/env bash
# Build the local control-plane and node binaries (etcd and etcdutl, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kubelet, helm) from pinned versions fetched through
# the Go module proxy. Nothing is downloaded from release pages.
#
# Binaries land in ${STOWAGE_CACHE:-$HOME/.cache/stowage}/bin (never in the
# clone). Each group is rebuilt only when its stamp (pins + wrapper go.mod/go.sum
# + Go version + flags) changes, so a second run is a fast no-op.
#
# Usage: deploy/local/build.sh [--print-bin-dir]
#   --print-bin-dir  only print the bin directory on stdout (progress on stderr)
set -euo pipefail

# ---- pins -------------------------------------------------------------------
# k8s.io/kubernetes v1.34.10 is the newest 1.34 patch that the module proxy
# serves AND the checksum database verifies (1.34.11/1.34.12 are not in the
# checksum database, 1.34.13 is not served). Keep deploy/local/k8s/go.mod in sync.
K8S_VERSION=v1.34.10
K8S_STAGING_VERSION=v0.34.10
# Release date of the pinned tag (module proxy .info Time), used as buildDate so
# the build is reproducible. The proxy does not expose the tag's commit.
K8S_BUILD_DATE=2026-07-22T22:05:06Z
K8S_GIT_COMMIT=""
# go.etcd.io/etcd/server/v3 newest 3.6 patch. Keep deploy/local/etcd/go.mod in sync.
ETCD_VERSION=v3.6.16
# helm.sh/helm/v3 newest v3 release; its client-go is v0.37 (Kubernetes 1.37).
HELM_VERSION=v3.22.0
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37
# ------------------------------------------------------------------------------

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${STOWAGE_CACHE:-$HOME/.cache/stowage}"
BIN="$CACHE/bin"

print_bin_dir=false
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) print_bin_dir=true ;;
    -h | --help)
      sed -n '2,12p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'build.sh: error: %s\n' "$*" >&2
  exit 1
}

command -v go >/dev/null 2>&1 || die "'go' not found in PATH; install Go >= 1.26 (etcd ${ETCD_VERSION} needs go 1.26)"
command -v sha256sum >/dev/null 2>&1 || die "'sha256sum' not found (coreutils)"

mkdir -p "$BIN"

# Several engineers / test runs may call this at once: serialize on a lock.
exec 9>"$CACHE/.build.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    log "another build holds $CACHE/.build.lock; waiting"
    flock 9
  fi
fi

# Check a wrapper go.mod matches the pins so a bump is never half done.
require_in_gomod() {
  local gomod="$1" pattern="$2" what="$3"
  grep -Eq "$pattern" "$gomod" || die "$gomod does not pin $what; update it and run 'go mod tidy' in $(dirname "$gomod")"
}
require_in_gomod "$HERE/k8s/go.mod" "^(require )?[[:space:]]*k8s\.io/kubernetes ${K8S_VERSION//./\\.}( |\$)" "k8s.io/kubernetes ${K8S_VERSION}"
if grep -E '^[[:space:]]k8s\.io/[a-z-]+ => k8s\.io/[a-z-]+ v' "$HERE/k8s/go.mod" | grep -qv " ${K8S_STAGING_VERSION}\$"; then
  die "$HERE/k8s/go.mod replaces a staging module with a version other than ${K8S_STAGING_VERSION}"
fi
require_in_gomod "$HERE/etcd/go.mod" "^[[:space:]]go\.etcd\.io/etcd/server/v3 ${ETCD_VERSION//./\\.}( |\$)" "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"

GO_VERSION="$(go env GOVERSION)"
export CGO_ENABLED=0
# A fresh CI clone has no stale GOFLAGS surprises; VCS stamping is pointless here.
GOFLAGS_BUILD=(-trimpath -buildvcs=false -mod=readonly)

# stamp_of NAME CONTENT... -> prints a hash of everything the build depends on.
stamp_of() { printf '%s\n' "$@" | sha256sum | cut -d' ' -f1; }

# up_to_date STAMP BINARIES... -> 0 if the stamp file matches and all exist.
up_to_date() {
  local stamp="$1" name="$2"
  shift 2
  [[ -f "$BIN/.stamp-$name" && "$(cat "$BIN/.stamp-$name")" == "$stamp" ]] || return 1
  local b
  for b in "$@"; do [[ -x "$BIN/$b" ]] || return 1; done
}

# install_from TMPDIR STAMP NAME BINARIES...: move freshly built binaries in place.
install_from() {
  local tmp="$1" stamp="$2" name="$3"
  shift 3
  local b
  for b in "$@"; do
    [[ -x "$tmp/$b" ]] || die "build of $name produced no '$b' in $tmp"
    mv -f "$tmp/$b" "$BIN/$b"
  done
  printf '%s\n' "$stamp" >"$BIN/.stamp-$name"
  rm -rf "$tmp"
}

timed() {
  local start=$SECONDS
  "$@"
  log "  took $((SECONDS - start))s"
}

# ---- Kubernetes ------------------------------------------------------------------
build_k8s() {
  local minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local ldflags="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitCommit=${K8S_GIT_COMMIT}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${K8S_BUILD_DATE}"
  done
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
  local stamp
  stamp="$(stamp_of "$K8S_VERSION" "$K8S_STAGING_VERSION" "$GO_VERSION" "$ldflags" \
    "${GOFLAGS_BUILD[*]}" "$(cat "$HERE/k8s/go.mod" "$HERE/k8s/go.sum")")"
  if up_to_date "$stamp" k8s "${bins[@]}"; then
    log "kubernetes ${K8S_VERSION}: up to date ($BIN)"
    return
  fi
  log "kubernetes ${K8S_VERSION}: building ${bins[*]} (a cold build takes about 8-15 min on 2 cores)"
  local tmp
  tmp="$(mktemp -d "$BIN/.tmp-k8s.XXXXXX")"
  # One invocation so the three commands share compiled packages.
  (cd "$HERE/k8s" && go build "${GOFLAGS_BUILD[@]}" -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet) || {
    rm -rf "$tmp"
    die "go build of kubernetes ${K8S_VERSION} failed (see output above)"
  }
  install_from "$tmp" "$stamp" k8s "${bins[@]}"
}

# ---- etcd ------------------------------------------------------------------------
build_etcd() {
  local ldflags="-s -w"
  local stamp
  stamp="$(stamp_of "$ETCD_VERSION" "$GO_VERSION" "$ldflags" "${GOFLAGS_BUILD[*]}" \
    "$(cat "$HERE/etcd/go.mod" "$HERE/etcd/go.sum")")"
  if up_to_date "$stamp" etcd etcd etcdutl; then
    log "etcd ${ETCD_VERSION}: up to date ($BIN)"
    return
  fi
  log "etcd ${ETCD_VERSION}: building etcd and etcdutl"
  local tmp
  tmp="$(mktemp -d "$BIN/.tmp-etcd.XXXXXX")"
  # etcdutl restores the etcd plugin's snapshots in its tests (`etcdutl snapshot restore`).
  # One build each: `-o dir/` would name them after their package (`server`, `etcdutl`).
  local bin pkg
  for bin in etcd etcdutl; do
    pkg=go.etcd.io/etcd/server/v3
    [[ "$bin" == etcdutl ]] && pkg=go.etcd.io/etcd/etcdutl/v3
    (cd "$HERE/etcd" && go build "${GOFLAGS_BUILD[@]}" -ldflags "$ldflags" -o "$tmp/$bin" "$pkg") || {
      rm -rf "$tmp"
      die "go build of $bin ${ETCD_VERSION} failed (see output above)"
    }
  done
  install_from "$tmp" "$stamp" etcd etcd etcdutl
}

# ---- helm ------------------------------------------------------------------------
build_helm() {
  local v=helm.sh/helm/v3
  local ldflags="-s -w -X ${v}/internal/version.version=${HELM_VERSION}"
  ldflags+=" -X ${v}/internal/version.gitTreeState=clean"
  ldflags+=" -X ${v}/pkg/lint/rules.k8sVersionMajor=${HELM_K8S_MAJOR} -X ${v}/pkg/lint/rules.k8sVersionMinor=${HELM_K8S_MINOR}"
  ldflags+=" -X ${v}/pkg/chartutil.k8sVersionMajor=${HELM_K8S_MAJOR} -X ${v}/pkg/chartutil.k8sVersionMinor=${HELM_K8S_MINOR}"
  local stamp
  stamp="$(stamp_of "$HELM_VERSION" "$GO_VERSION" "$ldflags" "-trimpath -buildvcs=false")"
  if up_to_date "$stamp" helm helm; then
    log "helm ${HELM_VERSION}: up to date ($BIN)"
    return
  fi
  log "helm ${HELM_VERSION}: building (go install)"
  local tmp
  tmp="$(mktemp -d "$BIN/.tmp-helm.XXXXXX")"
  # Run outside any module so `go install pkg@version` uses helm's own go.mod.
  (cd "$tmp" && GOBIN="$tmp" GOFLAGS='' go install -trimpath -buildvcs=false -ldflags "$ldflags" \
    "${v}/cmd/helm@${HELM_VERSION}") || {
    rm -rf "$tmp"
    die "go install of helm ${HELM_VERSION} failed (see output above)"
  }
  install_from "$tmp" "$stamp" helm helm
}

total_start=$SECONDS
timed build_etcd
timed build_k8s
timed build_helm
log "all binaries ready in $BIN ($((SECONDS - total_start))s)"

if $print_bin_dir; then
  printf '%s\n' "$BIN"
else
  for b in etcd etcdutl kube-apiserver kube-controller-manager kubectl helm; do
    printf '%s\n' "$BIN/$b"
  done
fi
