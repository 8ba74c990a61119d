#!/usr/bin/env bash
# A whole cluster on this machine, every part its own process as deployed:
# two control replicas over TLS on one PostgreSQL database, two relays and
# N workers (default 2), each given every control URL.
#
#   scripts/cluster.sh [WORKERS]        # Ctrl-C stops it all
#
# Needs what scripts/setup-host.sh --tests installs (Docker, PostgreSQL, openssl)
# and the images (scripts/build-images.sh). Ports: control 7101/7102,
# relays HTTP 8101/8102 (loopback), HTTPS 8441/8442, tunnels UDP
# 7441/7442, relay metrics 9101/9102, worker metrics from 9111. State in
# .warren/cluster (kept across runs: workers rejoin with their credential).
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-2}
pg=${WARREN_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
dir=$PWD/.warren/cluster
mkdir -p "$dir"

# WARREN_BIN: a warren binary already built (else a release build here).
if [ -z "${WARREN_BIN:-}" ]; then
  cargo build --release --locked -p warren
fi
warren=${WARREN_BIN:-$PWD/target/release/warren}
[ -x target/x86_64-unknown-linux-gnu/release/warren-init ] || scripts/build-init.sh
init=$PWD/target/x86_64-unknown-linux-gnu/release/warren-init

db=warren_cluster
psql "$pg" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
  psql "$pg" -qc "CREATE DATABASE $db"
db_url=${pg%/*}/$db

# Control's certificate from a private CA: relays and workers trust the CA.
if [ ! -f "$dir/control.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj /CN=warren-cluster-ca -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=warren-control -keyout "$dir/control.key" -out "$dir/control.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$dir/control.ext"
  openssl x509 -req -in "$dir/control.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 365 -extfile "$dir/control.ext" -out "$dir/control.pem" 2>/dev/null
fi
secret_file() { [ -f "$1" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$1"; cat "$1"; }
admin=$(secret_file "$dir/admin.key")
relay_secret=$(secret_file "$dir/relay.secret")
controls="https://127.0.0.1:7101,https://127.0.0.1:7102"

pids=()
stop() {
  trap - EXIT INT TERM
  echo "cluster: stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit 0
}
trap stop EXIT INT TERM

for i in 1 2; do
  cat >"$dir/control-$i.toml" <<EOF
listen = "127.0.0.1:710$i"
data_dir = "$dir/control-$i"
database_url = "$db_url"
domain = "warren.localhost"
https_port = 8441
ssh_endpoint = "localhost:2222"
admin_api_key = "$admin"
relay_secret = "$relay_secret"
control_urls = ["https://127.0.0.1:7101", "https://127.0.0.1:7102"]
[[relays]]
addr = "127.0.0.1:7441"
server_name = "warren.localhost"
ca_file = "$dir/relay-1/ca.pem"
[[relays]]
addr = "127.0.0.1:7442"
server_name = "warren.localhost"
ca_file = "$dir/relay-2/ca.pem"
[sessions]
image = "warren/session:dind"
[tls]
cert_file = "$dir/control.pem"
key_file = "$dir/control.key"
EOF
done
for i in 1 2; do
  cat >"$dir/relay-$i.toml" <<EOF
domain = "warren.localhost"
data_dir = "$dir/relay-$i"
[https]
listen = "127.0.0.1:844$i"
[http]
listen = "127.0.0.1:810$i"
[admin]
listen = "127.0.0.1:910$i"
[tunnel]
listen = "127.0.0.1:744$i"
node_secret = "$relay_secret"
[auth]
jwks_url = "https://127.0.0.1:7101/.well-known/jwks.json,https://127.0.0.1:7102/.well-known/jwks.json"
[control]
url = "$controls"
secret = "$relay_secret"
ca_file = "$dir/ca.pem"
EOF
done

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "cluster: nothing listens on $1" >&2; exit 1; }
# Replica 1 first: it runs the migrations.
for i in 1 2; do
  "$warren" control --config "$dir/control-$i.toml" >"$dir/control-$i.log" 2>&1 & pids+=($!)
  wait_port "710$i"
done
for i in 1 2; do
  "$warren" relay --config "$dir/relay-$i.toml" >"$dir/relay-$i.log" 2>&1 & pids+=($!)
  wait_port "810$i"
done

api() { curl -fsS --cacert "$dir/ca.pem" -H "Authorization: Bearer $admin" "$@"; }
for i in $(seq 1 "$workers"); do
  cat >"$dir/worker-$i.toml" <<EOF
control_url = "$controls"
control_ca_file = "$dir/ca.pem"
node_id = "worker-$i"
data_dir = "$dir/worker-$i"
[docker]
init_binary = "$init"
network = "warren-cluster-$i"
[admin]
listen = "127.0.0.1:$((9110 + i))"
EOF
  join=()
  if [ ! -f "$dir/worker-$i/node.json" ]; then
    token=$(api -X POST -d '{}' -H 'content-type: application/json' https://127.0.0.1:7101/v1/nodes/join-tokens |
      sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
    join=(--join "$token")
  fi
  "$warren" agent --config "$dir/worker-$i.toml" "${join[@]}" >"$dir/worker-$i.log" 2>&1 & pids+=($!)
done

for _ in $(seq 1 600); do
  ready=$( (api https://127.0.0.1:7101/v1/nodes || true) | grep -o '"state":"ready"' | wc -l || true)
  [ "$ready" -ge "$workers" ] && break
  sleep 0.1
done
cat <<EOF
cluster: up ($workers workers ready; logs in $dir)
  API (either replica):  https://127.0.0.1:7101  https://127.0.0.1:7102   CA: $dir/ca.pem
  admin key:             $admin
  terminals (loopback):  http://<session>.warren.localhost:8101/  or :8102
  metrics:               control :7101/metrics (https), relays :9101 :9102, workers :9111…
  a session:             curl --cacert $dir/ca.pem -H "Authorization: Bearer $admin" \\
                           -X POST -d '{}' https://127.0.0.1:7101/v1/sessions
Ctrl-C stops everything.
EOF
wait -n "${pids[@]}" || true
echo "cluster: a part exited; see $dir/*.log" >&2
