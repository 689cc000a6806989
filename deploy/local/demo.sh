#!/usr/bin/env bash
# The one-command demo: a local Kubernetes control plane, stowage installed with its Helm
# chart, a PostgreSQL database with sample data, and a first backup of it.
#
# Usage: deploy/local/demo.sh [start]   set everything up (or reuse what runs) and back up
#        deploy/local/demo.sh stop      stop PostgreSQL, the node and the control plane
#        deploy/local/demo.sh clean     stop, then delete the demo's state
#
# What `start` does, each step skipped when already done (so running it again only
# re-triggers a backup):
#   1. installs the Debian packages (tests/install-deps.sh), builds the control plane and
#      the node (deploy/local/build.sh), stowage (cargo, debug profile) and the images
#      (deploy/local/images.sh: stowage, and a PostgreSQL client image from Debian's pg_dump);
#   2. starts the control plane and a real node (containerd, kubelet, kube-scheduler in a
#      network namespace of its own) in ~/.cache/stowage/demo/cp, imports the images;
#   3. starts PostgreSQL on $STOWAGE_DEMO_PG_PORT (default 15432) as user postgres, on
#      127.0.0.1 and on the host's address on the node's link, with a `shop` database
#      (customers, orders) and a `backup` role;
#   4. creates namespace shop, a local PersistentVolume and PVC `backups`, Secret
#      `app-db-backup` (the role's password), `helm upgrade --install`s stowage, applies
#      BackupTarget app-db + BackupSchedule nightly;
#   5. annotates stowage.dev/backup-now, waits for the run and shows the result;
#   6. restores that backup into a new database, shop_restored, with a BackupRestore
#      (deploy/examples/restore.yaml), and compares its row counts with shop's.
# Needs root (network namespaces, containers), Rust and Go.
# Environment: STOWAGE_DEMO_DIR (default ~/.cache/stowage/demo), STOWAGE_DEMO_PG_PORT,
#   STOWAGE_DEMO_PG_DIR (PostgreSQL's data, default /var/tmp/stowage-demo-postgres: it must
#   be readable by user postgres, which ~ is not), CARGO_TARGET_DIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${STOWAGE_CACHE:-$HOME/.cache/stowage}"
DEMO="${STOWAGE_DEMO_DIR:-$CACHE/demo}"
CP="$DEMO/cp"
LOGS="$DEMO/logs"
VOLUMES="$DEMO/volumes"
PG_PORT="${STOWAGE_DEMO_PG_PORT:-15432}"
PG_DIR="${STOWAGE_DEMO_PG_DIR:-/var/tmp/stowage-demo-postgres}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
RUST_BIN="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/debug"
NS=shop

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
log() { printf '    %s\n' "$*" >&2; }
die() {
  printf 'demo.sh: error: %s\n' "$*" >&2
  exit 1
}

# ---- PostgreSQL (Debian's, run by hand as user postgres) -------------------------------
pg_bin() {
  local v
  v="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -n | tail -n 1)"
  [[ -n "$v" ]] || die "PostgreSQL is not installed (apt-get install postgresql)"
  printf '/usr/lib/postgresql/%s/bin\n' "$v"
}
as_postgres() { runuser -u postgres -- "$@"; }
pg_running() { [[ -d "$PG_DIR/data" ]] && as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; }

stop() {
  step "stopping the demo"
  if pg_running; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null
    log "PostgreSQL stopped"
  fi
  if [[ -d "$CP" ]]; then
    "$HERE/down.sh" "$CP" >&2 || true
  fi
  log "stopped; state kept in $DEMO (delete it with: $0 clean)"
}

clean() {
  stop
  rm -rf "$DEMO" "$PG_DIR"
  log "removed $DEMO and $PG_DIR"
}

case "${1:-start}" in
  start) ;;
  stop)
    stop
    exit 0
    ;;
  clean)
    clean
    exit 0
    ;;
  -h | --help)
    sed -n '2,25p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  *) die "unknown command '$1' (start, stop, clean)" ;;
esac

[[ "$(id -u)" == 0 ]] || die "the demo needs root: the node runs containers in namespaces of their own (run it with sudo)"
mkdir -p "$DEMO" "$LOGS"

# ---- 1. packages and builds ---------------------------------------------------------------
step "1/6 packages and builds"
bash "$REPO/tests/install-deps.sh" >"$LOGS/install-deps.log" 2>&1 || {
  tail -n 20 "$LOGS/install-deps.log" >&2
  die "installing packages failed (log: $LOGS/install-deps.log)"
}
for tool in cargo go python3; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed"
done
log "control plane binaries (deploy/local/build.sh; the first build takes a while)"
"$HERE/build.sh" >"$LOGS/build.log" 2>&1 || {
  tail -n 20 "$LOGS/build.log" >&2
  die "deploy/local/build.sh failed (log: $LOGS/build.log)"
}
log "stowage (cargo build; log: $LOGS/cargo.log)"
(cd "$REPO" && cargo build -p stowage --bin stowage) >"$LOGS/cargo.log" 2>&1 || {
  tail -n 30 "$LOGS/cargo.log" >&2
  die "cargo build failed (log: $LOGS/cargo.log)"
}
STOWAGE="$RUST_BIN/stowage"

# ---- 2. control plane + node ------------------------------------------------------------------
step "2/6 local Kubernetes control plane and a real node"
STOWAGE_UP_NODE=kubelet "$HERE/up.sh" "$CP" >"$LOGS/up.log" 2>&1 || {
  tail -n 30 "$LOGS/up.log" >&2
  die "the control plane did not start (log: $LOGS/up.log)"
}
# shellcheck source=/dev/null
source "$CP/env"
k() { "$KUBECTL" --request-timeout 20s "$@"; }
log "API server $STOWAGE_APISERVER_URL; node $STOWAGE_NODE_NAME at $STOWAGE_NODE_IP (containerd $STOWAGE_CONTAINERD_ADDRESS)"
mapfile -t IMAGES < <("$HERE/images.sh" import "$CP" "stowage=$STOWAGE" postgres-client 2>>"$LOGS/images.log") ||
  die "building or importing the images failed (log: $LOGS/images.log)"
STOWAGE_IMAGE="${IMAGES[0]}"
PG_CLIENT_IMAGE="${IMAGES[1]}"
log "images in the node's containerd: $STOWAGE_IMAGE, $PG_CLIENT_IMAGE"

# ---- 3. PostgreSQL with sample data -----------------------------------------------------------
PG_HOST="$STOWAGE_NODE_HOST_IP"
step "3/6 PostgreSQL on 127.0.0.1:$PG_PORT and $PG_HOST:$PG_PORT (for pods) with sample data"
PGBIN="$(pg_bin)"
mkdir -p "$PG_DIR"
chown postgres:postgres "$PG_DIR"
chmod 700 "$PG_DIR"
if [[ ! -s "$PG_DIR/data/PG_VERSION" ]]; then
  as_postgres "$PGBIN/initdb" -D "$PG_DIR/data" --auth-local=peer --auth-host=scram-sha-256 \
    --username=postgres >"$LOGS/initdb.log" 2>&1 || die "initdb failed (log: $LOGS/initdb.log)"
  log "initialised $PG_DIR/data"
fi
# Pods connect from the node's pod network, with a password.
hba_line="host all all $STOWAGE_NODE_POD_CIDR scram-sha-256"
grep -qxF "$hba_line" "$PG_DIR/data/pg_hba.conf" || printf '%s\n' "$hba_line" >>"$PG_DIR/data/pg_hba.conf"
if pg_running && [[ "$(cat "$PG_DIR/listen" 2>/dev/null)" == "$PG_HOST" ]]; then
  as_postgres "$PGBIN/pg_ctl" -D "$PG_DIR/data" reload >/dev/null
  log "PostgreSQL already running"
else
  if pg_running; then as_postgres "$PGBIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null; fi
  as_postgres "$PGBIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1,$PG_HOST -k $PG_DIR" start >/dev/null ||
    die "PostgreSQL did not start (log: $PG_DIR/postgres.log; is port $PG_PORT free? set STOWAGE_DEMO_PG_PORT)"
  printf '%s\n' "$PG_HOST" >"$PG_DIR/listen"
  log "PostgreSQL started (log $PG_DIR/postgres.log)"
fi
psql_admin() { as_postgres "$PGBIN/psql" -h "$PG_DIR" -p "$PG_PORT" -v ON_ERROR_STOP=1 -qAt "$@"; }
# The backup role's password: generated once, kept in the demo dir (mode 600), given to the
# cluster as a Secret; never on a command line.
if [[ ! -s "$DEMO/pg-password" ]]; then
  # No trailing newline: the Secret is made from this file as is.
  (umask 077 && printf '%s' "$(head -c 18 /dev/urandom | base64 | tr -d '/+=\n')" >"$DEMO/pg-password")
fi
PASSWORD_SQL="$(sed "s/'/''/g" "$DEMO/pg-password")"
psql_admin -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'backup') THEN
    CREATE ROLE backup LOGIN;
  END IF;
END \$\$;
ALTER ROLE backup PASSWORD '$PASSWORD_SQL';
-- Step 6 restores into a new database, created by the target's role.
ALTER ROLE backup CREATEDB;
SQL
if [[ -z "$(psql_admin -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'shop'")" ]]; then
  psql_admin -d postgres -c "CREATE DATABASE shop" >/dev/null
  psql_admin -d shop >/dev/null <<'SQL'
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers(id),
                     total numeric(10,2) NOT NULL, placed_at timestamptz NOT NULL);
INSERT INTO customers (name, email)
  SELECT 'customer ' || i, 'customer' || i || '@example.com' FROM generate_series(1, 500) i;
INSERT INTO orders (customer_id, total, placed_at)
  SELECT 1 + (i % 500), round((random() * 200)::numeric, 2), now() - i * interval '1 hour'
  FROM generate_series(1, 5000) i;
GRANT CONNECT ON DATABASE shop TO backup;
GRANT USAGE ON SCHEMA public TO backup;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO backup;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO backup;
SQL
  log "created database shop (500 customers, 5000 orders)"
else
  log "database shop exists ($(psql_admin -d shop -c 'SELECT count(*) FROM orders') orders)"
fi

# ---- 4. stowage and the backup definitions ---------------------------------------------------------
step "4/6 stowage (helm upgrade --install) and a BackupTarget + BackupSchedule"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
# No provisioner here: the claim is bound to a local volume on the node, made for it.
CLAIM_DIR="$VOLUMES/$NS-backups"
mkdir -p "$CLAIM_DIR"
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $NS-backups}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: $NS, name: backups}
  local: {path: $CLAIM_DIR}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$STOWAGE_NODE_NAME]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: backups, namespace: $NS}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: $NS-backups
  resources: {requests: {storage: 1Gi}}
EOF
k -n "$NS" create secret generic app-db-backup --from-file=password="$DEMO/pg-password" \
  --dry-run=client -o yaml | k apply -f - >/dev/null
"$HELM" upgrade --install stowage "$REPO/charts/stowage" -n stowage-system --create-namespace \
  --set "image.repository=${STOWAGE_IMAGE%:*}" --set "image.tag=${STOWAGE_IMAGE##*:}" --set logFormat=text \
  --set "runner.serviceAccount.namespaces={$NS}" >"$LOGS/helm.log" 2>&1 || {
  cat "$LOGS/helm.log" >&2
  die "helm upgrade --install failed"
}
log "helm release stowage (namespace stowage-system, revision $("$HELM" -n stowage-system status stowage -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])'))"
k -n stowage-system rollout status deployment/stowage --timeout=180s >/dev/null ||
  die "the operator did not become ready; see: $KUBECTL -n stowage-system logs deploy/stowage"
log "operator ready ($(k -n stowage-system get pods -l app.kubernetes.io/name=stowage -o 'jsonpath={.items[0].metadata.name} on {.items[0].spec.nodeName}, {.items[0].status.containerStatuses[0].containerID}'))"
cat >"$DEMO/app-db.yaml" <<EOF
# deploy/examples/postgres-target.yaml, pointed at the demo's PostgreSQL.
apiVersion: stowage.dev/v1alpha1
kind: BackupTarget
metadata:
  name: app-db
  namespace: $NS
  labels:
    tier: db
spec:
  postgres:
    image: $PG_CLIENT_IMAGE
    host: $PG_HOST
    port: $PG_PORT
    database: shop
    username: backup
    passwordSecretRef:
      name: app-db-backup
      key: password
    format: custom
  storage:
    claimName: backups
  compression: zstd
EOF
k apply -f "$DEMO/app-db.yaml" -f "$REPO/deploy/examples/nightly-schedule.yaml" >/dev/null
log "applied BackupTarget $NS/app-db ($DEMO/app-db.yaml) and BackupSchedule $NS/nightly (deploy/examples/nightly-schedule.yaml)"

# ---- 5. an on-demand backup -------------------------------------------------------------------
step "5/6 on-demand backup"
previous="$(k -n "$NS" get backuptarget app-db -o 'jsonpath={.status.lastBackup.job}')"
token="$(date +%s)"
k -n "$NS" annotate backuptarget app-db "stowage.dev/backup-now=$token" --overwrite >/dev/null
log "kubectl -n $NS annotate backuptarget app-db stowage.dev/backup-now=$token --overwrite"
result=""
for _ in $(seq 1 150); do
  result="$(k -n "$NS" get backuptarget app-db -o json | python3 -c '
import json, sys
token, previous = sys.argv[1], sys.argv[2]
st = json.load(sys.stdin).get("status") or {}
last = st.get("lastBackup") or {}
if st.get("lastHandledBackupNow") != token or not last.get("completionTime") or last.get("job", "") in ("", previous):
    print("running")
elif last.get("outcome") == "Succeeded":
    print("ok " + last.get("artifact", "") + " " + last.get("size", str(last.get("sizeBytes", ""))))
else:
    print("failed " + (last.get("reason") or "") + ": " + (last.get("message") or ""))
' "$token" "$previous")" || result="running"
  [[ "$result" == running ]] || break
  sleep 2
done
case "$result" in
  ok*) log "backup succeeded: ${result#ok }" ;;
  failed*) log "backup FAILED: ${result#failed }" ;;
  *) log "the backup has not finished yet; watch it with: kubectl -n $NS get backuptarget app-db -w" ;;
esac

# ---- 6. a restore into a new database ----------------------------------------------------------
step "6/6 restore the backup into a new database (BackupRestore)"
restored=""
if [[ "$result" == ok* ]]; then
  # A fresh copy each run: drop the previous one (the restore refuses a database with data).
  k -n "$NS" delete backuprestore app-db-into-new-database --ignore-not-found >/dev/null
  psql_admin -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS shop_restored" >/dev/null
  k apply -f "$REPO/deploy/examples/restore.yaml" >/dev/null
  log "kubectl apply -f deploy/examples/restore.yaml   (newest artifact of app-db into database shop_restored)"
  phase=""
  for _ in $(seq 1 150); do
    phase="$(k -n "$NS" get backuprestore app-db-into-new-database -o 'jsonpath={.status.phase}')" || phase=""
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 2
  done
  case "$phase" in
    Succeeded)
      counts() { psql_admin -d "$1" -c "SELECT (SELECT count(*) FROM customers) || ' customers, ' || (SELECT count(*) FROM orders) || ' orders'"; }
      live="$(counts shop)"
      restored="$(counts shop_restored)"
      log "restore succeeded: shop has $live, shop_restored has $restored"
      ;;
    Failed) log "restore FAILED: $(k -n "$NS" get backuprestore app-db-into-new-database -o 'jsonpath={.status.conditions[?(@.type=="Completed")].message}')" ;;
    *) log "the restore has not finished yet; watch it with: kubectl -n $NS get backuprestores -w" ;;
  esac
else
  log "skipped: the backup did not succeed"
fi

echo
"$KUBECTL" get backuptargets,backupschedules,backuprestores -A
echo
# Each run's pod ran on the real node, in a containerd container of the image it names.
"$KUBECTL" -n "$NS" get pods -o custom-columns='POD:.metadata.name,NODE:.spec.nodeName,STATUS:.status.phase,IMAGE:.spec.containers[0].image,CONTAINER:.status.containerStatuses[0].containerID'
echo
echo "Artifacts on the claim ($CLAIM_DIR, the local volume $NS-backups):"
"$STOWAGE" artifacts list "$CLAIM_DIR" || true

cat <<EOF

Look around:
  export KUBECONFIG=$KUBECONFIG
  alias kubectl=$KUBECTL
  kubectl get stowage -A                         # every stowage resource
  kubectl -n $NS describe backuptarget app-db    # conditions, last backup, events
  kubectl -n $NS describe backuprestore app-db-into-new-database   # the restore's checks
  psql -h 127.0.0.1 -p $PG_PORT -U backup shop_restored   # the restored copy
  kubectl -n stowage-system logs deploy/stowage  # the operator's log
  kubectl -n stowage-system port-forward deploy/stowage 8080   # then curl localhost:8080/metrics
  kubectl -n $NS annotate backuptarget app-db stowage.dev/backup-now="\$(date +%s)" --overwrite
  $STOWAGE verify $CLAIM_DIR
  psql -h 127.0.0.1 -p $PG_PORT -U backup shop   # password in $DEMO/pg-password
Logs: $LOGS (builds, images), kubectl logs (every container: operator, backup Jobs),
      $CP/logs (etcd, kube-apiserver, kube-controller-manager, containerd, kubelet, kube-scheduler)
Run it again to re-trigger a backup:  $0
Stop:   $0 stop        (state kept; '$0 clean' deletes it)
EOF
case "$result" in
  ok*) [[ -n "$restored" ]] && exit 0 || exit 1 ;;
  *) exit 1 ;;
esac
