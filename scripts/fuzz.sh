#!/usr/bin/env bash
# Fuzzes Warren's decoders of outside input with cargo-fuzz (libFuzzer):
# tunnel frames, the init wire, terminal control input, host routing and
# the SSH key parser (fuzz/fuzz_targets/).
#   scripts/fuzz.sh [--runs N] [TARGET...]
# Default: 200,000 runs of every target (what scripts/test.sh runs); the
# closing figures use --runs 10000000. Installs cargo-fuzz when missing.
# cargo-fuzz passes unstable compiler flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain take them (no nightly is needed or fetched).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=200000
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    -*) echo "usage: $0 [--runs N] [TARGET...]" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(tunnel_frames init_wire terminal_control host_route ssh_key)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null
fi
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  # A private copy of the seeds: libFuzzer adds what it finds to its corpus dir.
  work=$(mktemp -d /tmp/warren-fuzz-$t.XXXXXX)
  cp -r "fuzz/corpus/$t/." "$work/" 2>/dev/null || true
  echo "fuzz: $t, $runs runs"
  out=$(cargo fuzz run --sanitizer none --fuzz-dir fuzz "$t" "$work" -- \
    -runs="$runs" -max_len=8192 -artifact_prefix="fuzz/artifacts/$t/" 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz: $t FAILED (crash input in fuzz/artifacts/$t/)"
    rm -rf "$work"
    exit 1
  }
  echo "$out" | grep -E "^Done [0-9]+ runs" | sed "s/^/fuzz: $t: /"
  rm -rf "$work"
done
