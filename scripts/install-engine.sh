#!/usr/bin/env bash
# Install the container engines used by the integration tests (Debian 12):
# podman's Docker-compatible API service with runc, Docker Engine (dockerd
# with containerd), and a static busybox to build test images without a
# registry; and the checkers of the box kit (tests/unit/test_box_kit.py,
# tests/integration/test_box_kit_service.py): promtool, from the prometheus
# package, systemd-analyze, from the systemd package, and strace.
# Idempotent; needs root to install.
#
# The tests start their own private services (tests/support/podman.py and
# docker.py); nothing here starts one. Package scripts are kept from starting
# the system's dockerd, containerd or prometheus during the install
# (policy-rc.d), so no system service is left running. The systemd package
# is installed for its tools only: systemd need not be the running init.
set -euo pipefail

# podman pulls conmon and containers-common. netavark and iptables are named
# so that default (bridge) networking works without the recommends; rootless
# helpers (uidmap, slirp4netns, fuse-overlayfs), catatonit, criu and buildah
# are not needed when running as root with the vfs storage driver. docker.io
# brings containerd, runc and tini. prometheus brings promtool (its
# recommended node exporter is left out).
PACKAGES=(podman runc netavark iptables busybox-static docker.io containerd prometheus systemd strace)
COMMANDS=(podman runc dockerd containerd containerd-shim-runc-v2 promtool systemd-analyze strace)

installed() {
    local name
    for name in "${COMMANDS[@]}"; do
        command -v "$name" >/dev/null 2>&1 || return 1
    done
    [ -x /bin/busybox ] &&
        # The dynamic "busybox" package also ships /bin/busybox, which cannot
        # run inside an image without a libc.
        dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
}

if installed; then
    echo "install-engine: the engines, busybox-static and the checkers are already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-engine: an engine, busybox-static or a checker is missing; run as root" \
        "(or: sudo apt-get install -y --no-install-recommends ${PACKAGES[*]})" >&2
    exit 1
fi

# invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a
# service; 101 means "not allowed". An existing policy is left as it is.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 0755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

if ! installed; then
    echo "install-engine: installation finished but the engines or the checkers are still incomplete" >&2
    exit 1
fi
podman --version
dockerd --version
