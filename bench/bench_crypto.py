"""Single-core cipher throughput: the core through the Python API,
`cryptography`, and `openssl speed`, measured in the same run.

- format v1 (AES-256-CBC) against `openssl speed -evp aes-256-cbc`;
- format v2 (chunked AES-256-GCM, every chunk verified before release)
  against `openssl speed -evp aes-256-gcm`.

    make bench-crypto        (or: python bench/bench_crypto.py --seconds 2)

Prints MB/s (10^6 bytes per second) and each figure's ratio to openssl's
figure for the same cipher and direction. Timings vary between machines and
runs; the ratios are what to compare.
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

from edgeloader import _core

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
        dec, enc = _core.Decryptor(key, iv), _core.Encryptor(key, iv)
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


class _Stream(Protocol):
    def update(self, data: memoryview, /) -> bytes: ...
    def update_into(self, data: memoryview, out: bytearray, /) -> int: ...
    def finalize(self) -> bytes: ...


def whole_streams(
    new: Callable[[], _Stream], data: bytes, chunk: int, counted: int, out: bytearray | None
) -> Callable[[], int]:
    """One complete v2 stream per step (new stream, `data` in `chunk` pieces,
    finalize), counting `counted` plaintext bytes; `update_into` into `out`
    when given."""
    view = memoryview(data)

    def step() -> int:
        stream = new()
        for i in range(0, len(view), chunk):
            if out is None:
                stream.update(view[i : i + chunk])
            else:
                stream.update_into(view[i : i + chunk], out)
        stream.finalize()
        return counted

    return step


def v2_cases(data: bytes, key: bytes) -> dict[str, tuple[str, Callable[[], int]]]:
    """Format v2 streams of a 1 MiB plaintext (16 chunks of 64 KiB): decryption
    verifies every chunk before releasing it; encryption draws a fresh salt
    and nonce prefix per stream, as a real writer does."""
    ciphertext = _core.encrypt_v2(key, data)
    cases: dict[str, tuple[str, Callable[[], int]]] = {}
    for chunk in (64 << 10, 1 << 20):
        label = f"{chunk >> 10} KiB"
        out = bytearray(2 * chunk + (1 << 17))
        new_dec = lambda: _core.DecryptorV2(key)  # noqa: E731
        new_enc = lambda: _core.EncryptorV2(key)  # noqa: E731
        cases[f"core DecryptorV2.update, {label}"] = (
            "gcm decrypt",
            whole_streams(new_dec, ciphertext, chunk, len(data), None),
        )
        cases[f"core DecryptorV2.update_into, {label}"] = (
            "gcm decrypt",
            whole_streams(new_dec, ciphertext, chunk, len(data), out),
        )
        cases[f"core EncryptorV2.update, {label}"] = (
            "gcm encrypt",
            whole_streams(new_enc, data, chunk, len(data), None),
        )
        cases[f"core EncryptorV2.update_into, {label}"] = (
            "gcm encrypt",
            whole_streams(new_enc, data, chunk, len(data), out),
        )
    return cases


def openssl_speed(cipher: str, decrypt: bool, seconds: float) -> float | None:
    """openssl's single-core figure at 1 MiB blocks, in MB/s; None without openssl."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    args = [exe, "speed", "-elapsed", "-seconds", str(max(1, round(seconds))), "-bytes", "1048576"]
    args += ["-decrypt"] if decrypt else []
    args += ["-evp", cipher]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    match = re.search(rf"^{re.escape(cipher)}\s+([\d.]+)k", out, re.MULTILINE | re.IGNORECASE)
    return float(match.group(1)) * 1000 / 1e6 if match else None


BASELINES = {
    "decrypt": ("aes-256-cbc", True),
    "encrypt": ("aes-256-cbc", False),
    "gcm decrypt": ("aes-256-gcm", True),
    "gcm encrypt": ("aes-256-gcm", False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case (default 2)")
    parser.add_argument(
        "--only", choices=["v1", "v2"], default=None, help="run one format's cases only"
    )
    args = parser.parse_args()

    data, key, iv = os.urandom(DATA_SIZE), os.urandom(32), os.urandom(16)
    cases: dict[str, tuple[str, Callable[[], int]]] = {}
    if args.only in (None, "v1"):
        cases |= core_cases(data, key, iv) | cryptography_cases(data, key, iv)
    if args.only in (None, "v2"):
        cases |= v2_cases(data, key)
    wanted = {direction for direction, _ in cases.values()}
    baseline = {
        name: openssl_speed(cipher, decrypt, args.seconds)
        for name, (cipher, decrypt) in BASELINES.items()
        if name in wanted
    }
    rows: list[tuple[str, str, float]] = []
    for name, value in baseline.items():
        if value is not None:
            cipher, _ = BASELINES[name]
            rows.append((f"openssl speed -evp {cipher} ({name.split()[-1]})", name, value))
    for name, (direction, step) in cases.items():
        rows.append((name, direction, throughput(step, args.seconds)))

    print(f"One core, a {DATA_SIZE >> 20} MiB buffer per pass (v2: one whole stream per pass)")
    print(f"{'case':<46} {'MB/s':>8}  {'vs openssl':>10}")
    for name, direction, mbps in rows:
        base = baseline[direction]
        ratio = f"{mbps / base:.2f}x" if base else "n/a"
        print(f"{name:<46} {mbps:>8.0f}  {ratio:>10}")
    if not any(baseline.values()):
        print("openssl not found: no baseline, ratios omitted")


if __name__ == "__main__":
    main()
