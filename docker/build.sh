#!/usr/bin/env bash
# Build the stage images:  docker/build.sh [cpu] [cuda] [mlflow]   (no argument: all three)
#
# Names and tags come from bevt_core/images.py (BEVT_IMAGE_REGISTRY / BEVT_IMAGE_TAG), the
# place the KFP components and the k8s manifests read them from. The engine is docker or podman
# (docker/engine.sh: podman is installed and configured when there is no Docker daemon). The base
# is debian:bookworm; when no registry can be reached it is made here with debootstrap (same
# release) and imported as localhost/debian:bookworm. Idempotent: with nothing changed, a rebuild
# is served from the layer cache in seconds. BEVT_BUILD_FLAGS adds engine flags (e.g. --no-cache).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=docker/engine.sh
python=${PYTHON:-python3}
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(cpu cuda mlflow)

images_py() {  # images.py needs only the standard library: no venv required
  PYTHONPATH=. "$python" -c "from bevt_core import images; print(images.$1)"
}

# --- the base image --------------------------------------------------------------------------------
base=${BEVT_BASE_IMAGE:-debian:bookworm}
local_base=localhost/debian:bookworm
if ! "$engine" image inspect "$base" >/dev/null 2>&1; then
  if "$engine" image inspect "$local_base" >/dev/null 2>&1; then
    base=$local_base
  elif ! timeout 120 "$engine" pull -q "$base" >/dev/null 2>&1; then
    echo "[build] no registry answered for $base: making $local_base with debootstrap" >&2
    if ! command -v debootstrap >/dev/null; then
      echo "build.sh: debootstrap is missing (apt-get install debootstrap)" >&2
      exit 1
    fi
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    # debootstrap configures the release alone: add its updates and security suites, as the
    # registry's debian:bookworm has them, so that apt in the Dockerfile installs patched packages.
    cat > "$rootfs/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
    tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$local_base" >/dev/null
    base=$local_base
  fi
fi

# --- the images ------------------------------------------------------------------------------------
version=$(images_py 'tag()')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && ! git diff --quiet HEAD 2>/dev/null; then
  revision+=-dirty
fi
# pip inside the build trusts the host's CA bundle, passed as a secret: never stored in a layer.
cacert=${BEVT_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
if [ ! -f "$cacert" ]; then
  echo "build.sh: no CA bundle at $cacert (set BEVT_CA_BUNDLE)" >&2
  exit 1
fi
# The Dockerfile copies this file before its labels: buildah's layer cache ignores build-arg values,
# so without a changed file in front of them an image would keep the previous build's revision.
printf '%s\n' "$revision" > docker/revision.txt
for kind in "${kinds[@]}"; do
  ref=$(images_py "image('$kind')")
  start=$SECONDS
  # shellcheck disable=SC2086  # BEVT_BUILD_FLAGS is a list of flags
  "$engine" build -f docker/Dockerfile --target "$kind" --build-arg BASE_IMAGE="$base" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --secret id=cacert,src="$cacert" \
    ${BEVT_BUILD_FLAGS:-} -t "$ref" .
  echo "[build] $ref ($("$engine" --name) $base) in $((SECONDS - start)) s"
done
# Layers of images these builds superseded (gigabytes for bevt-cuda); the cache of the current ones stays.
"$engine" image prune -f >/dev/null
