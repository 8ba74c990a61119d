#!/usr/bin/env bash
# Builds Warren's session images from Debian packages, with no container
# registry: warren/session:mini (busybox, for fast tests) and
# warren/session:dind (debootstrap'd Debian with a Docker engine inside).
# Idempotent: an image that exists is kept unless --force is given.
#   scripts/build-images.sh [--force] [mini|dind ...]
set -euo pipefail

force=0
want=()
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    mini|dind) want+=("$a") ;;
    *) echo "usage: $0 [--force] [mini|dind ...]" >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -eq 0 ] && want=(mini dind)

# An image is current when its warren.image.rev label matches the recipe's.
DIND_REV=3 # 2: openssh-server (the SSH benchmark's sshd baseline); 3: podman for the isolated dind profile
have() {
  local want_rev=${2:-}
  local rev
  rev=$(docker image inspect -f '{{ index .Config.Labels "warren.image.rev" }}' "$1" 2>/dev/null) || return 1
  [ -z "$want_rev" ] || [ "$rev" = "$want_rev" ]
}
work=$(mktemp -d /tmp/warren-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

build_mini() {
  local name=warren/session:mini
  if [ $force -eq 0 ] && have $name; then echo "images: $name exists"; return; fi
  echo "images: building $name (busybox)"
  [ -x /bin/busybox ] || { echo "images: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }
  local root=$work/mini
  mkdir -p "$root"/{bin,tmp,root,etc,www,proc,sys,dev}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  echo 'warren mini session' >"$root/www/index.html"
  tar -C "$root" -c . | docker import \
    -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' -c 'LABEL warren.image=mini' - $name >/dev/null
  echo "images: $name built"
}

mirror() {
  # The mirror apt already uses (no other host is reachable).
  local m
  m=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$m" ] || m=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_dind() {
  local name=warren/session:dind
  if [ $force -eq 0 ] && have $name $DIND_REV; then echo "images: $name exists"; return; fi
  command -v debootstrap >/dev/null || { echo "images: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  local root=$work/dind m
  m=$(mirror)
  echo "images: building $name (debootstrap from $m, about a minute)"
  debootstrap --variant=minbase \
    --include=bash,docker.io,iptables,procps,iproute2,ca-certificates,coreutils,vim-tiny,openssh-sftp-server,openssh-server,less,busybox \
    bookworm "$root" "$m" >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log"; exit 1; }
  # podman and crun: containers inside sessions of the isolated `dind`
  # profile (debootstrap cannot configure them itself; apt in the tree can).
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman crun' \
    >"$work/podman.log" 2>&1 || { tail -30 "$work/podman.log"; exit 1; }
  : >"$root/etc/resolv.conf"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # The image's own command: start the inner Docker engine (vfs works in any
  # nesting) and keep it running; warren-init runs this as a child.
  cat >"$root/usr/local/bin/warren-dind" <<'SH'
#!/bin/sh
# Started by warren-init as the image's command. Under a host-root profile
# (cgroups writable) it runs the inner dockerd; under the isolated `dind`
# profile (a user namespace, cgroups read-only) containers come from podman
# instead, which needs no daemon (see /usr/local/bin/docker).
mkdir -p /var/log
if mkdir /sys/fs/cgroup/cpuset/warren-probe 2>/dev/null; then
  rmdir /sys/fs/cgroup/cpuset/warren-probe
  exec dockerd --storage-driver=vfs >/var/log/dockerd.log 2>&1
fi
echo "warren-dind: no writable cgroups; docker runs podman" >/var/log/dockerd.log
SH
  chmod +x "$root/usr/local/bin/warren-dind"
  # `docker` is the inner engine where one runs, else podman (same CLI).
  cat >"$root/usr/local/bin/docker" <<'SH'
#!/bin/sh
if [ -S /var/run/docker.sock ] && /usr/bin/docker version >/dev/null 2>&1; then
  exec /usr/bin/docker "$@"
fi
exec /usr/bin/podman "$@"
SH
  chmod +x "$root/usr/local/bin/docker"
  # Podman inside a session: vfs storage, no cgroups of its own (the
  # session's limits bound it), the session's network and user namespace
  # (no NET_ADMIN, no id map needed), crun.
  mkdir -p "$root/etc/containers"
  cat >"$root/etc/containers/storage.conf" <<'CONF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
  cat >"$root/etc/containers/registries.conf" <<'CONF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF
  # keyring and pivot_root: both refused by Docker's default seccomp
  # profile, which sessions keep.
  cat >"$root/etc/containers/containers.conf" <<'CONF'
[containers]
keyring = false
cgroups = "disabled"
netns = "host"
userns = "host"
ipcns = "host"
utsns = "host"
[engine]
no_pivot_root = true
runtime = "crun"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  echo 'warren' >"$root/etc/hostname"
  # sshd is there for comparisons (and users who want it), not started.
  rm -f "$root"/etc/ssh/ssh_host_*_key*
  mkdir -p "$root/run/sshd"
  tar -C "$root" -c . | docker import \
    -c 'CMD ["/usr/local/bin/warren-dind"]' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'LABEL warren.image=dind' -c "LABEL warren.image.rev=$DIND_REV" - $name >/dev/null
  echo "images: $name built"
}

for w in "${want[@]}"; do "build_$w"; done
