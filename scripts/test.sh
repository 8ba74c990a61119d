#!/usr/bin/env bash
# Runs Warren's whole test suite: installs what the tests need besides the
# stack (scripts/setup-host.sh --tests: Chromium, PostgreSQL, OpenSSH,
# Prometheus…), builds the static warren-init that session containers run,
# makes sure the session images exist, runs every test, then a short fuzz
# run of each fuzz target.
# Tests that need Docker fail (not skip) when CI=true and Docker is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# (Root only: it installs packages and configures dockerd.)
if [ "$(id -u)" = 0 ]; then
  scripts/setup-host.sh --tests
fi
scripts/build-init.sh
if timeout 10 docker info >/dev/null 2>&1; then
  scripts/build-images.sh
fi
# The control plane's PostgreSQL tests use a local server when one answers.
if [ -z "${WARREN_TEST_POSTGRES_URL:-}" ] && pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  export WARREN_TEST_POSTGRES_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres
fi
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --locked --profile "$profile" "$@"
# A short fuzz run of every decoder of outside input (scripts/fuzz.sh).
[ "${WARREN_SKIP_FUZZ:-}" = 1 ] || scripts/fuzz.sh
