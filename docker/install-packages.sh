#!/usr/bin/env bash
# Used by docker/Dockerfile during a build: `install-packages.sh PIP_ARGS...` (e.g. -r FILE) installs
# into /opt/venv with every version taken from the lock, then checks that nothing unpinned got in.
#
# Wheels are downloaded into the build's cache mount and installed from there: the package
# registry's responses on these machines carry no cache headers, so pip's own HTTP cache would
# keep nothing, and a change to the lock would download the CUDA wheels (~4 GB) again.
set -euo pipefail
wheels=/root/.cache/bevt-wheels
# PIP_CONSTRAINT (not -c) also pins the build tools of the few sdist-only packages; PIP_CERT is the
# host's CA bundle, a build secret.
export PIP_CONSTRAINT=/opt/bevt/lock.txt PIP_CERT=/run/secrets/cacert PIP_NO_CACHE_DIR=1
pip download --dest "$wheels" "$@"
pip install --no-index --find-links "$wheels" "$@"
python /opt/bevt/check_lock.py /opt/bevt/lock.txt
