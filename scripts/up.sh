#!/usr/bin/env bash
# Starts the whole Warren stack on this machine: installs what the host
# needs (once), builds warren-init and the warren binary, then runs
# `warren up` (control on SQLite, a relay, a local agent). Flags pass through:
#   scripts/up.sh [--data-dir DIR] [--domain D] [--https-port P] [--http-port P] [--api-port P] [--trust] …
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
scripts/build-init.sh >/dev/null
cargo build --release --locked -p warren
exec target/release/warren up "$@"
