#!/usr/bin/env bash
# Builds warren-init as a static binary (it runs inside any image, even one
# with no libc) at target/x86_64-unknown-linux-gnu/release/warren-init.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p warren-init --target x86_64-unknown-linux-gnu "$@"
echo "built target/x86_64-unknown-linux-gnu/release/warren-init"
