"""Single-core AES-256-CBC throughput: the core through the Python API,
`cryptography`, and `openssl speed`, measured in the same run.

    make bench-crypto        (or: python bench/bench_crypto.py --seconds 2)

Prints MB/s (10^6 bytes per second) and each figure's ratio to openssl's
figure for the same direction. Timings vary between machines and runs; the
ratios are what to compare.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edgeloader import crypto

# The same 1 MiB working set as `openssl speed -bytes 1048576`, so cache
# effects are alike on both sides of each ratio.
DATA_SIZE = 1 << 20


def throughput(step: Callable[[], int], seconds: float) -> float:
    """MB/s of `step`, which processes some bytes and returns how many."""
    step()  # warm up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += step()
    return done / elapsed / 1e6


def over_chunks(
    update: Callable[[memoryview], object], data: bytes, chunk: int
) -> Callable[[], int]:
    view = memoryview(data)

    def step() -> int:
        for i in range(0, len(view), chunk):
            update(view[i : i + chunk])
        return len(view)

    return step


class _UpdateInto(Protocol):
    def update_into(self, data: memoryview, out: bytearray, /) -> int: ...


def into(cipher: _UpdateInto, out: bytearray) -> Callable[[memoryview], int]:
    """`cipher.update_into` bound to a fixed, reused output buffer."""
    return lambda view: cipher.update_into(view, out)


def core_cases(data: bytes, key: bytes, iv: bytes) -> dict[str, tuple[str, Callable[[], int]]]:
    cases: dict[str, tuple[str, Callable[[], int]]] = {}
    for chunk in (64 << 10, 1 << 20):
        label = f"{chunk >> 10} KiB"
        out = bytearray(chunk + 16)
        dec, enc = crypto.Decryptor(key, iv), crypto.Encryptor(key, iv)
        cases[f"core Decryptor.update, {label}"] = ("decrypt", over_chunks(dec.update, data, chunk))
        cases[f"core Decryptor.update_into, {label}"] = (
            "decrypt",
            over_chunks(into(dec, out), data, chunk),
        )
        cases[f"core Encryptor.update, {label}"] = ("encrypt", over_chunks(enc.update, data, chunk))
        cases[f"core Encryptor.update_into, {label}"] = (
            "encrypt",
            over_chunks(into(enc, out), data, chunk),
        )
    return cases


def cryptography_cases(
    data: bytes, key: bytes, iv: bytes
) -> dict[str, tuple[str, Callable[[], int]]]:
    chunk = 1 << 20
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    dec, enc = cipher.decryptor(), cipher.encryptor()
    out = bytearray(chunk + 15)
    return {
        "cryptography update, 1 MiB": ("decrypt", over_chunks(dec.update, data, chunk)),
        "cryptography update_into, 1 MiB": (
            "decrypt",
            over_chunks(into(dec, out), data, chunk),
        ),
        "cryptography encrypt update, 1 MiB": ("encrypt", over_chunks(enc.update, data, chunk)),
        "cryptography encrypt update_into, 1 MiB": (
            "encrypt",
            over_chunks(into(enc, out), data, chunk),
        ),
    }


def openssl_speed(decrypt: bool, seconds: float) -> float | None:
    """openssl's single-core figure at 1 MiB blocks, in MB/s; None without openssl."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    args = [exe, "speed", "-elapsed", "-seconds", str(max(1, round(seconds))), "-bytes", "1048576"]
    args += ["-decrypt"] if decrypt else []
    args += ["-evp", "aes-256-cbc"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^aes-256-cbc\s+([\d.]+)k", out, re.MULTILINE | re.IGNORECASE)
    return float(match.group(1)) * 1000 / 1e6 if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case (default 2)")
    args = parser.parse_args()

    data, key, iv = os.urandom(DATA_SIZE), os.urandom(32), os.urandom(16)
    baseline = {
        "decrypt": openssl_speed(decrypt=True, seconds=args.seconds),
        "encrypt": openssl_speed(decrypt=False, seconds=args.seconds),
    }
    rows: list[tuple[str, str, float]] = []
    for name, value in baseline.items():
        if value is not None:
            rows.append((f"openssl speed -evp aes-256-cbc ({name})", name, value))
    cases = core_cases(data, key, iv) | cryptography_cases(data, key, iv)
    for name, (direction, step) in cases.items():
        rows.append((name, direction, throughput(step, args.seconds)))

    print(f"AES-256-CBC, one core, a {DATA_SIZE >> 20} MiB buffer per pass")
    print(f"{'case':<46} {'MB/s':>8}  {'vs openssl':>10}")
    for name, direction, mbps in rows:
        base = baseline[direction]
        ratio = f"{mbps / base:.2f}x" if base else "n/a"
        print(f"{name:<46} {mbps:>8.0f}  {ratio:>10}")
    if not any(baseline.values()):
        print("openssl not found: no baseline, ratios omitted")


if __name__ == "__main__":
    main()
