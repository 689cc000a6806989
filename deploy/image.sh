#!/usr/bin/env bash
# Build the stowage container image with buildah (rootless-friendly: chroot isolation,
# vfs storage; no daemon, no base image to pull: the Dockerfile starts FROM scratch).
#
# Usage: deploy/image.sh [--binary PATH] [--tag IMAGE] [--output oci-archive:FILE|docker-archive:FILE]
#                        [--context-only DIR]
#   --binary PATH        static stowage binary (default: the release build under
#                        $CARGO_TARGET_DIR, built with `cargo build --release --bin stowage`
#                        when missing)
#   --tag IMAGE          image name (default ghcr.io/stowage-dev/stowage:<workspace version>)
#   --output DEST        also write the image to an archive (e.g. oci-archive:/tmp/stowage.tar)
#   --context-only DIR   only stage the build context (Dockerfile, binary, CA bundle) in DIR,
#                        for `docker build DIR` or another builder
# Environment: BUILDAH_STORAGE_ROOT (default $HOME/.cache/stowage/containers) keeps
#   buildah's images outside the system store.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
die() {
  printf 'image.sh: error: %s\n' "$*" >&2
  exit 1
}
log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
[[ -n "$version" ]] || die "cannot read the workspace version from $REPO/Cargo.toml"
target_dir="${CARGO_TARGET_DIR:-$REPO/target}"
binary="" tag="ghcr.io/stowage-dev/stowage:$version" output="" context_only=""
while (($#)); do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --tag) tag="${2:?--tag needs an image name}"; shift 2 ;;
    --output) output="${2:?--output needs oci-archive:FILE or docker-archive:FILE}"; shift 2 ;;
    --context-only) context_only="${2:?--context-only needs a directory}"; shift 2 ;;
    -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done

if [[ -z "$binary" ]]; then
  binary="$target_dir/x86_64-unknown-linux-gnu/release/stowage"
  if [[ ! -x "$binary" ]]; then
    log "building $binary (cargo build --release --bin stowage)"
    (cd "$REPO" && CARGO_TARGET_DIR="$target_dir" cargo build --release --bin stowage)
  fi
fi
[[ -x "$binary" ]] || die "$binary is not an executable file"
# scratch has no libc: the binary must be static.
if command -v file >/dev/null 2>&1; then
  file -L "$binary" | grep -Eq 'statically linked|static-pie linked' ||
    die "$binary is not statically linked ($(file -L "$binary" | cut -d: -f2-)); build with the repository's .cargo/config.toml"
fi
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s "$ca_bundle" ]] || die "$ca_bundle is missing: apt-get install ca-certificates"

stage() { # stage DIR: the build context
  mkdir -p "$1"
  cp "$REPO/Dockerfile" "$1/Dockerfile"
  cp "$binary" "$1/stowage"
  cp "$ca_bundle" "$1/ca-certificates.crt"
}

if [[ -n "$context_only" ]]; then
  stage "$context_only"
  log "build context staged in $context_only"
  exit 0
fi

command -v buildah >/dev/null 2>&1 || die "buildah is missing: apt-get install buildah"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
stage "$ctx"
storage_root="${BUILDAH_STORAGE_ROOT:-$HOME/.cache/stowage/containers}"
mkdir -p "$storage_root/storage" "$storage_root/run"
store=(--root "$storage_root/storage" --runroot "$storage_root/run" --storage-driver vfs)

log "buildah bud -t $tag (binary $binary)"
buildah "${store[@]}" bud --isolation chroot --layers=false -f "$ctx/Dockerfile" -t "$tag" "$ctx" >&2
if [[ -n "$output" ]]; then
  rm -f "${output#*:}"
  buildah "${store[@]}" push "$tag" "$output" >&2
  log "wrote $output"
fi
log "built $tag"
buildah "${store[@]}" images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' --filter "reference=$tag"
