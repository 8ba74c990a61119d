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
img_log=""
# The image build is its own process group: stopped with this script
# (a failed compile, Ctrl-C), never left running alone.
cleanup() {
  # The group once setsid has run; the process itself if it has not yet.
  if [ -n "$img" ]; then
    kill -TERM -- "-$img" 2>/dev/null || kill -TERM "$img" 2>/dev/null || true
  fi
  if [ -n "$img_log" ]; then rm -f "$img_log"; fi
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM
case " $* " in
  *" --image"*) ;;
  *)
    img_log=$(mktemp /tmp/warren-up-image.XXXXXX)
    setsid scripts/build-images.sh dind >"$img_log" 2>&1 &
    img=$!
    ;;
esac
scripts/build-init.sh >/dev/null
cargo build --release --locked -p warren
if [ -n "$img" ]; then
  echo "up: waiting for the session image warren/session:dind (log: $img_log)"
  if ! wait "$img"; then
    img=""
    cat "$img_log" >&2
    echo "up: building warren/session:dind failed (log above)" >&2
    exit 1
  fi
  img=""
fi
trap - EXIT
cleanup
exec target/release/warren up "$@"
