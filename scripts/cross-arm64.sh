#!/usr/bin/env bash
# Cross-build the aarch64 abi3 wheel on x86_64 (Debian 12), then check it.
#
# Toolchain: Debian's rustc-web/cargo-web (1.96) with the arm64 standard
# library (libstd-rust-web-dev:arm64); `zig cc` (the ziglang package from
# PyPI) links against glibc stubs of the version asked for and compiles
# aws-lc-sys's C code for the same target, so the wheel runs on boxes with an
# older glibc than this machine's (Ubuntu 20.04 / JetPack 5 have 2.31).
#
#   make wheel-arm64                    (ARM64_MANYLINUX=manylinux_2_31 by default)
#   bash scripts/cross-arm64.sh [--check-only]
#
# Writes dist/edgeloader-<version>-cp311-abi3-<tag>_aarch64.whl; cargo's
# output goes to target/arm64/ and the tools to .cache/arm64/tools/.
set -euo pipefail
# shellcheck source=scripts/arm64-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/arm64-common.sh"

MANYLINUX=${ARM64_MANYLINUX:-manylinux_2_31}
ZIG_VERSION=${ARM64_ZIG_VERSION:-0.15.2}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TOOLS=$CACHE/tools

[[ $MANYLINUX =~ ^manylinux_2_([0-9]+)$ ]] ||
    die "ARM64_MANYLINUX must look like manylinux_2_NN, not '$MANYLINUX'"
MAX_GLIBC_MINOR=${BASH_REMATCH[1]}

# The wheel's checks: the tag the boxes' pip accepts, and the auditwheel policy
# behind it (no glibc symbol newer than the tag, only libraries every
# manylinux system has, the right machine).
check_wheel() {
    local wheel=$1 name tmp so tag glibc newest bad
    name=${wheel##*/}
    [[ $name == *-cp311-abi3-${MANYLINUX}_aarch64.whl ]] ||
        die "wheel $name is not tagged cp311-abi3-${MANYLINUX}_aarch64"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    (cd "$tmp" && "$PYTHON" -m zipfile -e "$wheel" .)
    tag=$(sed -n 's/^Tag: //p' "$tmp"/edgeloader-*.dist-info/WHEEL)
    [ "$tag" = "cp311-abi3-${MANYLINUX}_aarch64" ] || die "WHEEL file says Tag: $tag"
    so=$tmp/edgeloader/_core.abi3.so
    [ -f "$so" ] || die "no edgeloader/_core.abi3.so in $name"
    readelf -h "$so" | grep -q 'Machine: *AArch64' || die "_core.abi3.so is not an AArch64 ELF"
    # Every GLIBC_x.y the library asks for (its version needs), newest last.
    glibc=$(readelf -W -V "$so" | grep -o 'GLIBC_2\.[0-9]*' | sort -u -V)
    newest=$(tail -1 <<<"$glibc")
    [ -n "$newest" ] || die "no GLIBC symbol versions found in _core.abi3.so"
    bad=$(awk -F. -v max="$MAX_GLIBC_MINOR" '$2 + 0 > max' <<<"$glibc")
    [ -z "$bad" ] || die "_core.abi3.so needs $(tr "\n" " " <<<"$bad")(newer than glibc 2.$MAX_GLIBC_MINOR)"
    bad=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' |
        grep -vxE 'libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|ld-linux-aarch64\.so\.1|libgcc_s\.so\.1' || true)
    [ -z "$bad" ] || die "_core.abi3.so needs libraries outside the manylinux policy: $bad"
    log "checked $name ($(stat -c %s "$wheel") bytes): tag $tag, newest symbol $newest, AArch64"
}

if [ "${1:-}" = --check-only ]; then
    check_wheel "$(arm64_wheel)"
    exit 0
fi

# 1. Debian's Rust with the arm64 standard library.
ensure_arm64_arch
ensure_packages rustc-web cargo-web libstd-rust-web-dev:arm64
[ -d "/usr/lib/rustlib/$TARGET/lib" ] || die "no arm64 standard library in /usr/lib/rustlib"

# 2. maturin (the locked version) and zig, in a venv of their own.
MATURIN_VERSION=$(sed -n 's/^maturin==//p' "$ROOT/requirements/dev.lock")
[ -n "$MATURIN_VERSION" ] || die "maturin is not pinned in requirements/dev.lock"
tools=("maturin==$MATURIN_VERSION" "ziglang==$ZIG_VERSION")
want="${tools[*]}"
if [ "$(cat "$TOOLS/.installed" 2>/dev/null)" != "$want" ]; then
    [ -n "$PYTHON" ] || die "Python 3.11 is required"
    log "installing $want into $TOOLS"
    rm -rf "$TOOLS"
    "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "${tools[@]}"
    echo "$want" >"$TOOLS/.installed"
fi

# 3. Build. Debian's cargo and rustc come first on PATH (rustup's have no
# arm64 standard library); `python3` on PATH is the tools venv's, where
# maturin looks for `python3 -m ziglang`.
rm -f "$ROOT"/dist/edgeloader-*_aarch64.whl
(
    cd "$ROOT"
    unset RUSTUP_TOOLCHAIN
    export PATH="$TOOLS/bin:/usr/bin:/bin:$PATH" RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo \
        RUSTDOC=/usr/bin/rustdoc CARGO_TARGET_DIR="$ROOT/target/arm64"
    log "$(rustc --version), $(cargo --version), zig $(python3 -m ziglang version)"
    maturin build --release --locked --target "$TARGET" --zig \
        --compatibility "$MANYLINUX" --auditwheel check -o dist
)

# 4. Check what came out.
check_wheel "$(arm64_wheel)"
