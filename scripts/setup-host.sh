#!/usr/bin/env bash
# Installs and starts what Warren needs on a Debian 12 host.
#
#   scripts/setup-host.sh          what the stack needs (scripts/up.sh): the
#                                  Docker engine, cmake (Pingora's zlib-ng),
#                                  debootstrap and busybox-static (session
#                                  images), iptables, uidmap, lxcfs, e2fsprogs,
#                                  curl (the README's examples), pkg-config,
#                                  libsqlite3-dev and libzstd-dev (the build
#                                  links them: .cargo/config.toml)
#   scripts/setup-host.sh --tests  and what only the tests need (scripts/test.sh):
#                                  chromium (the browser tests), the OpenSSH
#                                  client (the SSH tests), PostgreSQL (the
#                                  control plane's scale path, started),
#                                  asciinema (recordings), Prometheus (the
#                                  cluster test)
#
# The Docker engine is set up the way a Warren worker runs it
# (docs/security.md): with user-namespace remapping, so a session's root is
# an unprivileged host uid. If dockerd already runs without it, it is
# restarted (its containers stop) unless WARREN_KEEP_DOCKER=1.
# Idempotent; safe to run again.
set -euo pipefail

tests=0
case "${1:-}" in
  --tests) tests=1 ;;
  "") ;;
  *) echo "setup-host: unknown option ${1} (expected nothing or --tests)" >&2; exit 2 ;;
esac

need=()
command -v dockerd >/dev/null || need+=(docker.io)
# The README's curl examples (and the tests run them as written).
command -v curl >/dev/null || need+=(curl)
command -v cmake >/dev/null || need+=(cmake)
# The build links the system's SQLite and zstd (.cargo/config.toml).
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists sqlite3 2>/dev/null || need+=(libsqlite3-dev)
pkg-config --exists libzstd 2>/dev/null || need+=(libzstd-dev)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need+=(busybox-static)
command -v iptables >/dev/null || need+=(iptables)
command -v newuidmap >/dev/null || need+=(uidmap)
command -v lxcfs >/dev/null || need+=(lxcfs)
# Session disk limits on ext4 workers: loop-mounted ext4 per session.
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ "$tests" = 1 ]; then
  command -v ssh >/dev/null && command -v scp >/dev/null && command -v sftp >/dev/null || need+=(openssh-client)
  command -v chromium >/dev/null || need+=(chromium)
  [ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
  # The recording test plays what it recorded with asciinema.
  command -v asciinema >/dev/null || need+=(asciinema)
  # The cluster test scrapes every part with a real Prometheus.
  [ -x /usr/bin/prometheus ] || need+=(prometheus)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-host: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p /etc/docker
want_cfg='{"userns-remap": "default"}'
if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$want_cfg" ]; then
  echo "$want_cfg" >/etc/docker/daemon.json
fi

docker_ok() {
  timeout 10 docker info --format '{{.SecurityOptions}}' 2>/dev/null | grep -q "name=userns"
}
if timeout 10 docker info >/dev/null 2>&1 && ! docker_ok; then
  if [ "${WARREN_KEEP_DOCKER:-}" = 1 ]; then
    echo "setup-host: dockerd runs without user-namespace remapping; kept (WARREN_KEEP_DOCKER=1)" >&2
  else
    echo "setup-host: restarting dockerd with user-namespace remapping"
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
  fi
fi
if ! timeout 10 docker info >/dev/null 2>&1; then
  # A previous machine session may have left a pid file behind; dockerd
  # refuses to start while it exists.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  echo "setup-host: starting dockerd"
  nohup dockerd >/var/log/warren-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    timeout 5 docker info >/dev/null 2>&1 && break
    sleep 1
  done
  timeout 10 docker info >/dev/null 2>&1 || { echo "setup-host: dockerd did not start"; tail -50 /var/log/warren-dockerd.log; exit 1; }
fi
# lxcfs: each session sees its own memory, uptime and CPU quota in /proc
# (the agent binds its files in when they are there).
# A previous lxcfs that died leaves its FUSE mount behind ("Transport endpoint
# is not connected"): detach it lazily before starting a new one.
if ! head -c1 /var/lib/lxcfs/proc/meminfo >/dev/null 2>&1; then
  pkill -x lxcfs 2>/dev/null || true
  fusermount -uz /var/lib/lxcfs 2>/dev/null || umount -l /var/lib/lxcfs 2>/dev/null || true
  mkdir -p /var/lib/lxcfs
  nohup lxcfs --enable-cfs /var/lib/lxcfs >/var/log/warren-lxcfs.log 2>&1 &
  for _ in $(seq 1 20); do [ -f /var/lib/lxcfs/proc/meminfo ] && break; sleep 0.5; done
  [ -f /var/lib/lxcfs/proc/meminfo ] || { echo "setup-host: lxcfs did not start"; tail -20 /var/log/warren-lxcfs.log; exit 1; }
fi
# The QUIC tunnel asks for 4 MiB socket buffers (tunnel/src/udp.rs); the
# kernel caps them at these limits (208 KiB by default drops bursts).
for k in net.core.rmem_max net.core.wmem_max; do
  [ "$(sysctl -n "$k" 2>/dev/null || echo 0)" -ge 4194304 ] || sysctl -qw "$k=4194304" || true
done
# Every terminal is a PTY, and containers share the host's count less a
# reserve (4096 - 1024 by default): past about 3,000 terminals a worker's
# new terminals fail.
[ "$(sysctl -n kernel.pty.max 2>/dev/null || echo 0)" -ge 65536 ] || sysctl -qw kernel.pty.max=65536 || true
echo "setup-host: docker $(docker version --format '{{.Server.Version}}') ready"

[ "$tests" = 1 ] || exit 0
# PostgreSQL for the control plane's tests (a local cluster, password auth on loopback).
if ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  echo "setup-host: starting PostgreSQL"
  pg_ctlcluster 15 main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -q && break; sleep 1; done
fi
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
echo "setup-host: PostgreSQL ready (postgres://postgres:postgres@127.0.0.1:5432/postgres)"
