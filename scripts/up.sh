#!/usr/bin/env bash
# Starts the whole Warren stack on this machine: installs what the host
# needs (once), builds warren-init and the warren binary, then runs
# `warren up` (control on SQLite, a relay, a local agent). Flags pass through:
#   scripts/up.sh [--data-dir DIR] [--domain D] [--https-port P] [--http-port P] [--api-port P] [--trust] …
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
# The default session image is built while cargo compiles (debootstrap is
# mostly downloads and disk; warren up would otherwise build it after the
# compile). With --image, warren up builds what it needs itself.
img=""
case " $* " in
  *" --image"*) ;;
  *)
    img_log=$(mktemp /tmp/warren-up-image.XXXXXX)
    scripts/build-images.sh dind >"$img_log" 2>&1 &
    img=$!
    ;;
esac
scripts/build-init.sh >/dev/null
cargo build --release --locked -p warren
if [ -n "$img" ]; then
  if ! wait "$img"; then
    cat "$img_log" >&2
    echo "up: building warren/session:dind failed (log above)" >&2
    exit 1
  fi
  rm -f "$img_log"
fi
exec target/release/warren up "$@"
