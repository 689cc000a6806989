#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: installs the packages it needs,
# builds the local Kubernetes control plane from pinned sources (cached under
# ~/.cache/stowage, outside the clone), then runs formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

export STOWAGE_CACHE="${STOWAGE_CACHE:-$HOME/.cache/stowage}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$STOWAGE_CACHE/target}"
export CARGO_TERM_COLOR=never
# Tests run in parallel, but each control-plane test binary starts its own cluster;
# two at once is what 2 cores carry.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"

step() { printf '\n==> %s (%ss)\n' "$1" "$SECONDS"; }

step "packages"
bash tests/install-deps.sh

step "control plane binaries"
bash deploy/local/build.sh

step "format"
cargo fmt --all -- --check

step "build"
cargo build --workspace --all-targets --locked

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "container image (buildah)"
# The debug binary is as static as the release one; the image's shape is what is checked.
image=localhost/stowage:ci
bash deploy/image.sh --binary "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/debug/stowage" \
  --tag "$image" --output "oci-archive:$STOWAGE_CACHE/stowage-ci-image.tar"
store="${BUILDAH_STORAGE_ROOT:-$HOME/.cache/stowage/containers}"
user=$(buildah --root "$store/storage" --runroot "$store/run" --storage-driver vfs inspect \
  --format '{{.OCIv1.Config.User}}' "$image")
[ "$user" = "65532:65532" ] || { echo "image runs as '$user', expected 65532:65532"; exit 1; }
echo "image $image built, non-root user $user"

step "tests"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$STOWAGE_CACHE/last-test.log"
status=${PIPESTATUS[0]}

step "summary"
passed=$(grep -Eo '[0-9]+ passed' "$STOWAGE_CACHE/last-test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$STOWAGE_CACHE/last-test.log" | awk '{s+=$1} END {print s+0}')
echo "total: $passed passed, $failed failed"
exit "$status"
