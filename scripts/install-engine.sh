#!/usr/bin/env bash
# Install the container engine used by the integration tests (Debian 12):
# podman's Docker-compatible API service with runc, and a static busybox to
# build test images without a registry. Idempotent; needs root to install.
set -euo pipefail

# podman pulls conmon and containers-common. netavark and iptables are named
# so that default (bridge) networking works without the recommends; rootless
# helpers (uidmap, slirp4netns, fuse-overlayfs), catatonit, criu and buildah
# are not needed when running as root with the vfs storage driver.
PACKAGES=(podman runc netavark iptables busybox-static)

installed() {
    command -v podman >/dev/null 2>&1 &&
        command -v runc >/dev/null 2>&1 &&
        [ -x /bin/busybox ] &&
        # The dynamic "busybox" package also ships /bin/busybox, which cannot
        # run inside an image without a libc.
        dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
}

if installed; then
    echo "install-engine: podman, runc and busybox-static already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-engine: podman, runc or busybox-static is missing; run as root" \
        "(or: sudo apt-get install -y --no-install-recommends ${PACKAGES[*]})" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

if ! installed; then
    echo "install-engine: installation finished but the engine is still incomplete" >&2
    exit 1
fi
podman --version
