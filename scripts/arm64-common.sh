# shellcheck shell=bash
# Shared by scripts/cross-arm64.sh and scripts/test-arm64.sh (sourced, not run).
# Debian 12 (bookworm) on x86_64: installs what is missing as root, quietly,
# with at most one `apt-get update` per run, and keeps every download under
# .cache/arm64/ (ignored by git) so that a second run needs no network.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ARM64_CACHE:-$ROOT/.cache/arm64}
export TARGET=aarch64-unknown-linux-gnu
mkdir -p "$CACHE"

log() { echo "${0##*/}: $*"; }
die() { echo "${0##*/}: $*" >&2; exit 1; }

_apt_updated=0

# apt-get update, at most once per run; needed when the arm64 indexes are
# missing (fresh machine, or arm64 just added to dpkg).
apt_update_once() {
    [ "$_apt_updated" = 1 ] && return 0
    log "apt-get update"
    apt-get update -qq >"$CACHE/apt-update.log" 2>&1 ||
        { cat "$CACHE/apt-update.log" >&2; die "apt-get update failed"; }
    _apt_updated=1
}

arm64_lists_present() {
    compgen -G '/var/lib/apt/lists/*_binary-arm64_Packages*' >/dev/null
}

# Add arm64 to dpkg's architectures and make sure its package lists exist.
ensure_arm64_arch() {
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        require_root "dpkg --add-architecture arm64"
        dpkg --add-architecture arm64
    fi
    arm64_lists_present || { require_root "apt-get update"; apt_update_once; }
}

require_root() {
    [ "$(id -u)" -eq 0 ] ||
        die "needs root for: $*  (run as root, or do it by hand first)"
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# ensure_packages PKG...: install those that are missing (PKG may be name:arch).
ensure_packages() {
    local missing=() p
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    require_root "apt-get install ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >"$CACHE/apt-install.log" 2>&1; then
        # Stale lists: refresh once and retry.
        apt_update_once
        apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >"$CACHE/apt-install.log" 2>&1 ||
            { tail -20 "$CACHE/apt-install.log" >&2; die "apt-get install failed"; }
    fi
}

# The newest aarch64 wheel in dist/ (what scripts/cross-arm64.sh built).
arm64_wheel() {
    local w
    w=$(ls -t "$ROOT"/dist/edgeloader-*-cp311-abi3-manylinux_*_aarch64.whl 2>/dev/null | head -1)
    [ -n "$w" ] || die "no aarch64 wheel in dist/: run make wheel-arm64"
    echo "$w"
}
