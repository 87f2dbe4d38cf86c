#!/usr/bin/env bash
# Make a Python 3.11 base image from Debian 12's packages, without a
# container registry: a root filesystem tarball for `podman import` or
# `docker import`, shaped like python:3.11-slim-bookworm as the Dockerfile
# uses it (`python` and `pip` on PATH, pip free to install into the system).
#
#   bash scripts/image-base.sh        # prints the tarball's path
#
# The tarball is cached as .cache/image-base/<key>.tar, the key being this
# script's own hash (its packages and hooks); delete the folder to make it
# afresh with today's packages. mmdebstrap makes it (about 40 s, 100 MB);
# as root the script installs mmdebstrap when it is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
KEY=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
OUT_DIR="$ROOT/.cache/image-base"
OUT="$OUT_DIR/bookworm-python3-$KEY.tar"

if [ -s "$OUT" ]; then
    echo "$OUT"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "image-base: mmdebstrap is missing; run as root (or: apt-get install mmdebstrap)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >&2 || {
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >&2
    }
fi

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.tar.partial
# The Essential packages, passwd (useradd) and Python without the
# recommends: no apt, no compiler, half of minbase's size, which every
# layer of a build copies under the tests' vfs storage. Debian marks its
# Python as managed by apt (EXTERNALLY-MANAGED); an image's one application
# is installed with pip instead, as on the python images.
mmdebstrap --variant=essential --include=passwd,python3,python3-pip \
    --aptopt='APT::Install-Recommends "false"' \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf python3 "$1/usr/bin/python" && ln -sf pip3 "$1/usr/bin/pip"' \
    --format=tar \
    bookworm "$OUT.partial" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main" >&2
mv "$OUT.partial" "$OUT"
echo "$OUT"
