#!/usr/bin/env bash
# Run the core's Python tests on aarch64 under user-mode emulation, against
# the wheel that scripts/cross-arm64.sh built (make test-arm64 builds it first).
#
# The Python is Debian's arm64 CPython 3.11 unpacked (apt-get download +
# dpkg -x) into .cache/arm64/sysroot; qemu-aarch64-static runs it with that
# folder as its library prefix. pytest, hypothesis and cryptography come from
# PyPI as aarch64 wheels at the versions of requirements/dev.lock. The CPU
# model has the ARMv8 AES and PMULL instructions, so the hardware AES code of
# the core (the aes crate and AWS-LC) is what runs.
#
#   make test-arm64
#   bash scripts/test-arm64.sh [pytest arguments]     (default: the core's test files)
#   ARM64_SMOKE=0 ...                                  skip the smoke figure
#   QEMU_CPU=max ...                                   another CPU model (default cortex-a72)
set -euo pipefail
# shellcheck source=scripts/arm64-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/arm64-common.sh"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
QEMU_CPU=${QEMU_CPU:-cortex-a72}
SYSROOT=$CACHE/sysroot
SITE=$CACHE/site
DEBS=$CACHE/debs
WHEELS=$CACHE/wheels
TESTS=(tests/unit/test_cipher.py tests/unit/test_v2.py tests/unit/test_segments.py tests/unit/test_kdf_and_hash.py)

# Debian's arm64 CPython and the libraries its modules load. Not the whole
# dependency tree: curses, readline, sqlite, dbm and nis are never imported.
SYSROOT_PACKAGES=(
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libc6 libgcc-s1 libssl3 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libuuid1
)
# What the test files and the smoke run import, at dev.lock's versions.
PY_PACKAGES=(pytest pytest-timeout pytest-asyncio hypothesis cryptography)

ensure_packages qemu-user-static
QEMU=$(command -v qemu-aarch64-static) || die "qemu-aarch64-static not found"

# 1. The sysroot, rebuilt only when the package list or versions change.
want="${SYSROOT_PACKAGES[*]}"
if [ "$(cat "$SYSROOT/.packages" 2>/dev/null)" != "$want" ]; then
    ensure_arm64_arch
    mkdir -p "$DEBS"
    missing=()
    for p in "${SYSROOT_PACKAGES[@]}"; do
        compgen -G "$DEBS/${p}_*_arm64.deb" >/dev/null || missing+=("$p:arm64")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "downloading ${#missing[@]} arm64 packages"
        # apt-get download writes where it runs; as root it drops privileges
        # to _apt unless told not to, which cannot write into the cache.
        (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}" \
            >"$CACHE/apt-download.log" 2>&1) || {
            apt_update_once
            (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}" \
                >"$CACHE/apt-download.log" 2>&1) ||
                { cat "$CACHE/apt-download.log" >&2; die "apt-get download failed"; }
        }
    fi
    log "unpacking the sysroot"
    rm -rf "$SYSROOT" && mkdir -p "$SYSROOT"
    for p in "${SYSROOT_PACKAGES[@]}"; do
        deb=$(ls -t "$DEBS/${p}"_*_arm64.deb | head -1)
        dpkg -x "$deb" "$SYSROOT"
    done
    # qemu looks a path up in the prefix first and then on the host: these
    # empty folders keep the host's x86_64 site-packages out of sys.path.
    mkdir -p "$SYSROOT/usr/lib/python3/dist-packages" \
        "$SYSROOT/usr/local/lib/python3.11/dist-packages"
    echo "$want" >"$SYSROOT/.packages"
fi
PY=$SYSROOT/usr/bin/python3.11
[ -x "$PY" ] || die "no python3.11 in $SYSROOT"

# 2. The test dependencies as aarch64 wheels (manylinux up to glibc 2.31,
# like a box would install), cached, then installed into $SITE.
LOCK=$ROOT/requirements/dev.lock
want="$(sha256sum "$LOCK" | cut -c1-16) ${PY_PACKAGES[*]}"
if [ "$(cat "$SITE/.installed" 2>/dev/null)" != "$want" ]; then
    pip_target=(--python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
        --only-binary=:all: --disable-pip-version-check --platform manylinux2014_aarch64)
    for minor in $(seq 17 31); do pip_target+=(--platform "manylinux_2_${minor}_aarch64"); done
    log "fetching ${PY_PACKAGES[*]} (aarch64 wheels)"
    "$PYTHON" -m pip download --quiet "${pip_target[@]}" -c "$LOCK" -d "$WHEELS" \
        "${PY_PACKAGES[@]}"
    rm -rf "$SITE"
    "$PYTHON" -m pip install --quiet --root-user-action=ignore "${pip_target[@]}" --no-index --find-links "$WHEELS" \
        -c "$LOCK" --target "$SITE" "${PY_PACKAGES[@]}"
    echo "$want" >"$SITE/.installed"
fi

# 3. The wheel under test, unpacked afresh (a wheel is a zip of its install).
WHEEL=$(arm64_wheel)
bash "$ROOT/scripts/cross-arm64.sh" --check-only
PKG=$CACHE/wheel
rm -rf "$PKG" && mkdir -p "$PKG"
(cd "$PKG" && "$PYTHON" -m zipfile -e "$WHEEL" .)

# Run the arm64 Python: a clean environment, no site (sys.path is PYTHONPATH
# and the standard library), no bytecode written into the tree; openssl is
# kept off PATH so that the smoke run prints no host baseline.
arm64_python() {
    env -i HOME="$CACHE" LANG=C.UTF-8 PATH=/nonexistent TMPDIR=/tmp \
        PYTHONPATH="$PKG:$SITE" PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0 \
        QEMU_LD_PREFIX="$SYSROOT" QEMU_CPU="$QEMU_CPU" \
        "$QEMU" "$PY" -S "$@"
}

# 4. What the emulated CPU offers and which wheel is imported.
cd "$ROOT"
arm64_python - "$PKG" <<'EOF'
import ctypes, platform, sys
import edgeloader, edgeloader._core as core

AT_HWCAP, HWCAP_AES, HWCAP_PMULL = 16, 1 << 3, 1 << 4
getauxval = ctypes.CDLL(None).getauxval
getauxval.restype = ctypes.c_ulong
hwcap = getauxval(AT_HWCAP)
assert platform.machine() == "aarch64", platform.machine()
assert core.__file__.startswith(sys.argv[1]), f"imported {core.__file__}, not the wheel"
assert hwcap & HWCAP_AES and hwcap & HWCAP_PMULL, f"no ARMv8 AES/PMULL (hwcap {hwcap:#x})"
print(f"test-arm64: Python {platform.python_version()} on {platform.machine()}, "
      f"ARMv8 AES+PMULL present, edgeloader {edgeloader.__version__} from the wheel")
EOF

# 5. The tests.
[ $# -gt 0 ] || set -- "${TESTS[@]}"
log "pytest under qemu-aarch64-static (QEMU_CPU=$QEMU_CPU)"
arm64_python -m pytest -p no:cacheprovider -q "$@"

# 6. A smoke figure only: emulation says nothing about a real box's speed.
if [ "${ARM64_SMOKE:-1}" != 0 ]; then
    log "smoke run (emulated, not a performance figure):"
    arm64_python bench/bench_crypto.py --seconds 0.5 --only v2 | grep -E 'case|DecryptorV2'
fi
