#!/usr/bin/env bash
# Container images for the local node, built here with buildah and never pulled.
#
# Usage: deploy/local/images.sh build IMAGE...               build (or reuse) archives
#        deploy/local/images.sh import <state-dir> IMAGE...  build, then import each into
#                                                            the node of <state-dir>
# IMAGE is one of:
#   pause             the pod sandbox (deploy/local/node/pause.c, static, FROM scratch)
#   stowage[=BINARY]  the stowage image (deploy/image.sh) around BINARY, by default the
#                     debug build under $CARGO_TARGET_DIR
#   postgres-client   Debian's PostgreSQL client tools (pg_dump, pg_restore, psql) and the
#                     libraries they load, on an empty base; tagged with their major version
#   mariadb-client    Debian's MariaDB client tools (mariadb-dump, mariadb) and the
#                     libraries they load, on an empty base; tagged with their version
#   ldap-plugin       the example external plugin examples/plugins/ldap: its script at
#                     /plugin/ldap.sh, a static busybox (its sh, awk, sed, ...), jq and
#                     Debian's ldapsearch, ldapadd and ldapwhoami with the libraries they
#                     load; tagged with the plugin's version
#   standin-tools=DIR a static busybox (sh, cat, ...) with the executables of DIR in
#                     /usr/local/sbin: tests' stand-ins of a service's tools
# Archives are cached by content under ${STOWAGE_CACHE:-~/.cache/stowage}/images: an image
# is rebuilt only when what goes into it changes. The reference of each image is printed
# on stdout, one per line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${STOWAGE_CACHE:-$HOME/.cache/stowage}"
IMAGES="$CACHE/images"
STORE="${BUILDAH_STORAGE_ROOT:-$CACHE/containers}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'images.sh: error: %s\n' "$*" >&2
  exit 1
}

ensure_pkg() { # ensure_pkg COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "'$1' is missing and apt-get is not available; install package '$2'"
  log "installing $2 (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
  }
}

# Part of every image's cache key: a change to how images are packed rebuilds them.
SCRIPT_SUM="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-64)"

buildah_() { buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs "$@"; }

# pack REF ARCHIVE ROOTFS_DIR USER ENTRYPOINT_JSON: ROOTFS_DIR as one layer FROM scratch.
pack() {
  local ref="$1" archive="$2" root="$3" user="$4" entrypoint="$5"
  ensure_pkg buildah buildah
  mkdir -p "$STORE/storage" "$STORE/run" "$IMAGES"
  local ctr
  ctr="$(buildah_ from scratch)"
  buildah_ copy "$ctr" "$root" / >/dev/null
  buildah_ config --user "$user" --entrypoint "$entrypoint" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah_ commit -q "$ctr" "$ref" >/dev/null
  buildah_ rm "$ctr" >/dev/null
  rm -f "$archive.tmp"
  buildah_ push -q "$ref" "docker-archive:$archive.tmp:$ref"
  # The archive is the cache; buildah's copy would only grow its store.
  buildah_ rmi -f "$ref" >/dev/null 2>&1 || true
  mv "$archive.tmp" "$archive"
  prune "$(basename "$archive" | sed 's/-[0-9a-f]\{12\}\.tar$//')"
}

# prune KIND: keep the newest 5 archives of KIND (e.g. stowage, standin-tools).
prune() {
  find "$IMAGES" -maxdepth 1 -name "$1-????????????.tar" -printf '%T@ %p\n' | sort -rn |
    tail -n +6 | cut -d' ' -f2- | xargs -r rm -f
}

# Each builder prints "REFERENCE ARCHIVE".
build_pause() {
  local sum
  sum="$(cat "$HERE/node/pause.c" <(echo "$SCRIPT_SUM") | sha256sum | cut -c1-12)"
  local ref="localhost/stowage-pause:$sum" archive="$IMAGES/pause-$sum.tar"
  if [[ ! -s "$archive" ]]; then
    ensure_pkg gcc gcc
    log "building $ref"
    local tmp
    tmp="$(mktemp -d)"
    gcc -static -Os -s -o "$tmp/pause" "$HERE/node/pause.c"
    pack "$ref" "$archive" "$tmp" 65535:65535 '["/pause"]'
    rm -rf "$tmp"
  fi
  printf '%s %s\n' "$ref" "$archive"
}

build_stowage() {
  local binary="${1:-$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/debug/stowage}"
  [[ -x "$binary" ]] || die "no stowage binary at $binary; build it with: cargo build --bin stowage"
  local sum
  sum="$(cat "$binary" "$REPO/Dockerfile" "$REPO/deploy/image.sh" <(echo "$SCRIPT_SUM") | sha256sum | cut -c1-12)"
  local ref="localhost/stowage:$sum" archive="$IMAGES/stowage-$sum.tar"
  if [[ ! -s "$archive" ]]; then
    log "building $ref from $binary"
    mkdir -p "$IMAGES"
    rm -f "$archive.tmp"
    # A debug build carries ~250 MB of debug info that no container needs.
    local tmp
    tmp="$(mktemp -d)"
    strip -o "$tmp/stowage" "$binary"
    bash "$REPO/deploy/image.sh" --binary "$tmp/stowage" --tag "$ref" \
      --output "docker-archive:$archive.tmp" >&2
    rm -rf "$tmp"
    buildah_ rmi -f "$ref" >/dev/null 2>&1 || true
    mv "$archive.tmp" "$archive"
    prune stowage
  fi
  printf '%s %s\n' "$ref" "$archive"
}

# The host's PostgreSQL client (Debian's newest installed major) with the shared
# libraries it loads, as found by ldd: the same pg_dump the tests' server speaks to.
build_postgres_client() {
  local major
  major="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -n | tail -n 1)"
  [[ -n "$major" ]] || die "PostgreSQL is not installed: apt-get install postgresql-client"
  local bindir="/usr/lib/postgresql/$major/bin" tools=(pg_dump pg_restore psql pg_dumpall)
  local t files=()
  for t in "${tools[@]}"; do
    [[ -x "$bindir/$t" ]] || die "$bindir/$t is missing: apt-get install postgresql-client-$major"
    files+=("$bindir/$t")
  done
  local libs
  libs="$(ldd "${files[@]}" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u)"
  local sum
  sum="$( (echo "$SCRIPT_SUM"
    dpkg-query -W -f '${Version}\n' "postgresql-client-$major" 2>/dev/null || true
    for f in "${files[@]}" $libs; do sha256sum "$(readlink -f "$f")"; done) | sha256sum | cut -c1-12)"
  local ref="localhost/stowage-postgres-client:$major-$sum" archive="$IMAGES/postgres-client-$major-$sum.tar"
  if [[ ! -s "$archive" ]]; then
    log "building $ref (pg_dump $major and ${#files[@]} tools, $(wc -w <<<"$libs") libraries)"
    local tmp root
    tmp="$(mktemp -d)"
    root="$tmp/root"
    mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    for f in "${files[@]}"; do cp "$f" "$root/usr/local/bin/"; done
    local lib
    for lib in $libs; do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    # A user database for the tools (libpq looks up the current user's name).
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    pack "$ref" "$archive" "$root" 65532:65532 '["/usr/local/bin/pg_dump"]'
    rm -rf "$tmp"
  fi
  printf '%s %s\n' "$ref" "$archive"
}

# The host's MariaDB client tools (Debian's mariadb-client) with the shared libraries they
# load, as found by ldd: the mariadb-dump and mariadb the mysql plugin's Job runs, matching
# the tests' MariaDB servers. Run as 65532 on an empty base, like postgres-client.
build_mariadb_client() {
  local tools=(mariadb-dump mariadb) t files=()
  for t in "${tools[@]}"; do
    local path
    path="$(command -v "$t" 2>/dev/null || true)"
    [[ -n "$path" ]] || die "$t is missing: apt-get install mariadb-client"
    files+=("$(readlink -f "$path")")
  done
  local version
  version="$(dpkg-query -W -f '${Version}' mariadb-client 2>/dev/null | sed 's/^[0-9]*://; s/[-+~].*//')"
  [[ -n "$version" ]] || version="unknown"
  local libs
  libs="$(ldd "${files[@]}" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u)"
  local sum
  sum="$( (echo "$SCRIPT_SUM"
    dpkg-query -W -f '${Version}\n' mariadb-client 2>/dev/null || true
    for f in "${files[@]}" $libs; do sha256sum "$(readlink -f "$f")"; done) | sha256sum | cut -c1-12)"
  local ref="localhost/stowage-mariadb-client:$version-$sum" archive="$IMAGES/mariadb-client-$version-$sum.tar"
  if [[ ! -s "$archive" ]]; then
    log "building $ref (${#files[@]} tools, $(wc -w <<<"$libs") libraries)"
    local tmp root i
    tmp="$(mktemp -d)"
    root="$tmp/root"
    mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    # Under their own names (Debian installs them as mariadb-dump and mariadb).
    for i in "${!tools[@]}"; do cp "${files[$i]}" "$root/usr/local/bin/${tools[$i]}"; done
    local lib
    for lib in $libs; do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    # The client's authentication plugins (caching_sha2_password for MySQL 8 servers, ...)
    # are loaded at run time, not linked: take them along when the host has them.
    local plugins
    for plugins in /usr/lib/x86_64-linux-gnu/libmariadb3/plugin /usr/lib/mysql/plugin; do
      if [[ -d "$plugins" ]]; then
        mkdir -p "$root$plugins"
        cp -L "$plugins"/*.so "$root$plugins/" 2>/dev/null || true
      fi
    done
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    pack "$ref" "$archive" "$root" 65532:65532 '["/usr/local/bin/mariadb-dump"]'
    rm -rf "$tmp"
  fi
  printf '%s %s\n' "$ref" "$archive"
}

# The example LDAP plugin (examples/plugins/ldap): the script, run by a static busybox's
# sh, with jq and the host's ldap-utils (the tools the tests' slapd answers) and the shared
# libraries they load, as found by ldd. Run as 65532 on an empty base, like mariadb-client.
build_ldap_plugin() {
  local plugin="$REPO/examples/plugins/ldap"
  [[ -f "$plugin/ldap.sh" ]] || die "no plugin script at $plugin/ldap.sh"
  ensure_pkg busybox busybox-static
  local busybox
  busybox="$(command -v busybox)"
  file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
    die "$busybox is not static: apt-get install busybox-static"
  # ldapadd is ldapmodify under another name (it adds by default when called ldapadd):
  # each tool is copied, not linked, under the name the script calls.
  local tools=(ldapsearch ldapadd ldapwhoami jq) t files=()
  for t in "${tools[@]}"; do
    local path
    path="$(command -v "$t" 2>/dev/null || true)"
    [[ -n "$path" ]] || die "$t is missing: apt-get install ldap-utils jq"
    files+=("$(readlink -f "$path")")
  done
  local version
  version="$(sed -n 's/^  version: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$plugin/backupplugin.yaml" | head -n 1)"
  [[ -n "$version" ]] || die "no spec.version in $plugin/backupplugin.yaml"
  local libs
  libs="$(ldd "${files[@]}" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u)"
  local cacerts=/etc/ssl/certs/ca-certificates.crt
  local sum
  sum="$( (echo "$SCRIPT_SUM"
    dpkg-query -W -f '${Version}\n' ldap-utils jq 2>/dev/null || true
    sha256sum "$plugin/ldap.sh" "$busybox" | cut -d' ' -f1
    [[ -f "$cacerts" ]] && sha256sum "$cacerts" | cut -d' ' -f1
    for f in "${files[@]}" $libs; do sha256sum "$(readlink -f "$f")"; done) | sha256sum | cut -c1-12)"
  local ref="localhost/stowage-ldap-plugin:$version-$sum" archive="$IMAGES/ldap-plugin-$version-$sum.tar"
  if [[ ! -s "$archive" ]]; then
    log "building $ref (${#files[@]} tools, $(wc -w <<<"$libs") libraries)"
    local tmp root i
    tmp="$(mktemp -d)"
    root="$tmp/root"
    mkdir -p "$root/bin" "$root/usr/bin" "$root/plugin" "$root/etc/ldap" "$root/tmp"
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    local applet
    for applet in $("$busybox" --list); do
      [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    for i in "${!tools[@]}"; do cp "${files[$i]}" "$root/usr/bin/${tools[$i]}"; done
    local lib
    for lib in $libs; do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    install -m 0755 "$plugin/ldap.sh" "$root/plugin/ldap.sh"
    # ldaps:// and startTls check the server against the public CAs, as on the host.
    if [[ -f "$cacerts" ]]; then
      mkdir -p "$root/etc/ssl/certs"
      cp "$cacerts" "$root/etc/ssl/certs/"
      printf 'TLS_CACERT %s\n' "$cacerts" >"$root/etc/ldap/ldap.conf"
    fi
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    pack "$ref" "$archive" "$root" 65532:65532 '["/plugin/ldap.sh"]'
    rm -rf "$tmp"
  fi
  printf '%s %s\n' "$ref" "$archive"
}

# Busybox (Debian's static build) and the stand-ins a test wrote into DIR.
build_standin_tools() {
  local dir="$1"
  [[ -d "$dir" ]] || die "standin-tools: $dir is not a directory"
  ensure_pkg busybox busybox-static
  local busybox
  busybox="$(command -v busybox)"
  file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
    die "$busybox is not static: apt-get install busybox-static"
  local sum
  sum="$( (echo "$SCRIPT_SUM"
    sha256sum "$busybox" | cut -d' ' -f1
    cd "$dir" && find . -maxdepth 1 -type f ! -name '.*' -print0 | sort -z | xargs -0r sha256sum) | sha256sum | cut -c1-12)"
  local ref="localhost/stowage-standin-tools:$sum" archive="$IMAGES/standin-tools-$sum.tar"
  if [[ ! -s "$archive" ]]; then
    log "building $ref from $dir"
    local tmp root
    tmp="$(mktemp -d)"
    root="$tmp/root"
    mkdir -p "$root/bin" "$root/usr/local/sbin" "$root/tmp" "$root/var/tmp" "$root/etc"
    # World-writable, as in most images: a read-only root file system must refuse them.
    chmod 1777 "$root/tmp" "$root/var/tmp"
    cp "$busybox" "$root/bin/busybox"
    local applet
    for applet in $("$busybox" --list); do
      [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    find "$dir" -maxdepth 1 -type f ! -name '.*' -exec cp -p {} "$root/usr/local/sbin/" \;
    printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    pack "$ref" "$archive" "$root" 65532:65532 '["/bin/sh"]'
    rm -rf "$tmp"
  fi
  printf '%s %s\n' "$ref" "$archive"
}

build_one() { # build_one IMAGE -> "REF ARCHIVE"
  case "$1" in
    pause) build_pause ;;
    stowage) build_stowage ;;
    stowage=*) build_stowage "${1#stowage=}" ;;
    postgres-client) build_postgres_client ;;
    mariadb-client) build_mariadb_client ;;
    ldap-plugin) build_ldap_plugin ;;
    standin-tools=*) build_standin_tools "${1#standin-tools=}" ;;
    *) die "unknown image '$1' (pause, stowage[=BINARY], postgres-client, mariadb-client, ldap-plugin, standin-tools=DIR)" ;;
  esac
}

cmd="${1:-}"
shift || true
case "$cmd" in
  build)
    (($#)) || die "usage: $0 $cmd IMAGE..."
    for image in "$@"; do
      line="$(build_one "$image")"
      printf '%s\n' "${line%% *}"
    done
    ;;
  import)
    (($# >= 2)) || die "usage: $0 import <state-dir> IMAGE..."
    state="$(cd "$1" && pwd)"
    shift
    hash="$(printf '%s' "$state" | sha256sum | cut -c1-8)"
    sock="/run/stowage/$hash/containerd.sock"
    [[ -S "$sock" ]] || die "no containerd for $state ($sock): start the node with STOWAGE_UP_NODE=kubelet deploy/local/up.sh $state"
    for image in "$@"; do
      line="$(build_one "$image")"
      ref="${line%% *}" archive="${line#* }"
      if ! ctr --address "$sock" --namespace k8s.io images ls -q | grep -qxF "$ref"; then
        log "importing $ref into the node of $state"
        ctr --address "$sock" --namespace k8s.io images import "$archive" >/dev/null ||
          die "ctr could not import $archive"
      fi
      printf '%s\n' "$ref"
    done
    ;;
  *) die "usage: $0 build|import ... (try: sed -n 2,18p $0)" ;;
esac
