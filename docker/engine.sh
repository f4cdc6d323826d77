#!/usr/bin/env bash
# Run one container-engine command: `docker/engine.sh build ...`, `docker/engine.sh run ...`.
#
# The engine is Docker when its daemon answers, else podman (BEVT_ENGINE=docker|podman forces one).
# podman is installed from Debian when missing (as root) and always runs with this project's own
# containers.conf / storage.conf under $BEVT_CONTAINERS (default: ~/.cache/bevt-containers; not inside
# the sample-data cache, whose contents the sample tests compare), so the machine's other podman users
# and settings are never touched.
# Why each setting (reference/environment.md): crun fails on this cgroup layout (runc), there is
# no systemd (cgroupfs, file events), default ulimits are too low for DataLoader workers sharing
# tensors through file descriptors, and the storage driver must be overlay from the very first use
# (with vfs every run waits ~20 s on cleanup, and a store cannot change driver later).
#
# `docker/engine.sh --name` prints the engine it picked and does nothing else.
set -euo pipefail

PODMAN_PACKAGES=(podman buildah debootstrap runc conmon containernetworking-plugins netavark aardvark-dns
                 slirp4netns uidmap fuse-overlayfs golang-github-containers-common catatonit)

pick_engine() {
  if [ -n "${BEVT_ENGINE:-}" ]; then
    echo "$BEVT_ENGINE"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo docker
  else
    echo podman
  fi
}

install_podman() {
  command -v podman >/dev/null && command -v debootstrap >/dev/null && return
  if [ "$(id -u)" != 0 ]; then
    echo "engine.sh: podman is missing; install it (as root: apt-get install ${PODMAN_PACKAGES[*]})" >&2
    exit 1
  fi
  echo "[engine] installing podman from Debian" >&2
  # The package lists are missing on a fresh machine.
  if ! apt-cache show podman >/dev/null 2>&1; then
    apt-get update -q >&2
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PODMAN_PACKAGES[@]}" >&2
}

write_if_changed() {  # stdin to file $1, atomically and only on change: callers may run concurrently
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

configure_podman() {
  local dir=${BEVT_CONTAINERS:-$HOME/.cache/bevt-containers}
  mkdir -p "$dir/storage" "$dir/run"
  write_if_changed "$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  write_if_changed "$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
EOF
  export CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"
}

engine=$(pick_engine)
if [ "${1:-}" = --name ]; then
  echo "$engine"
  exit 0
fi
case "$engine" in
  podman) install_podman; configure_podman ;;
  docker) export DOCKER_BUILDKIT=1 ;;  # secrets and cache mounts need BuildKit
  *) echo "engine.sh: BEVT_ENGINE must be docker or podman, not '$engine'" >&2; exit 2 ;;
esac
exec "$engine" "$@"
