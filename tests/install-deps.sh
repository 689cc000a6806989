#!/usr/bin/env bash
# Installs the Debian packages the test suite, the benchmarks and the demo use, only when
# missing.
# Idempotent and non-interactive (CI runs it with no stdin).
set -euo pipefail

packages=(
  postgresql      # real PostgreSQL servers the plugin tests start on loopback
  openssl         # certificates of the local control plane
  file            # the static-binary check
  util-linux      # unshare/mount for the node agent's mount namespaces
  ca-certificates
  curl            # also the runner benchmark's plain pipeline (benches/runner.rs)
  zstd            # the runner benchmark's plain pipeline: `... | zstd -3 -T0`
  buildah         # builds the FROM-scratch container images (deploy/image.sh, deploy/local/images.sh)
  containerd      # the real node's container runtime (deploy/local/node.sh)
  runc            # ... and its OCI runtime
  containernetworking-plugins  # the node's bridge pod network (CNI bridge, host-local)
  iptables        # the node's DNAT of the kubernetes Service to the API server
  iproute2        # the node's network namespace and link
  gcc             # the pause image's static binary (deploy/local/node/pause.c), and jemalloc's C sources
  libc6-dev       # ... and the static C library it links
  make            # jemalloc, the binary's allocator, is built from source by tikv-jemalloc-sys (configure, make)
  busybox-static  # the shell of the tests' stand-in tools image (deploy/local/images.sh)
  prometheus      # promtool: unit tests of the Helm chart's alert rules (tests/helm.rs)
  redis-server    # real Redis servers the redis plugin's tests start on loopback (and redis-cli)
  mariadb-server  # real MariaDB servers the mysql plugin's tests start on loopback (mariadbd, mariadb-install-db)
  mariadb-client  # mariadb-dump and mariadb: the mysql plugin's tools, and the mariadb-client image (deploy/local/images.sh)
  protobuf-compiler  # protoc: etcd-client generates its gRPC code when stowage builds
  slapd           # real OpenLDAP servers the example LDAP plugin's tests start on loopback (tests/ldap-server)
  ldap-utils      # ldapsearch, ldapadd, ldapwhoami: the LDAP plugin's tools, and the ldap-plugin image (deploy/local/images.sh)
  jq              # the LDAP plugin script's JSON (config, facts, report), and the ldap-plugin image
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # slapd without Debian's configuration: no /etc/ldap/slapd.d database, no admin password
  # question. The tests start their own slapd (own slapd.conf, free loopback ports), so a
  # system slapd, running or not, never matters.
  echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
else
  echo "packages: all present"
fi
