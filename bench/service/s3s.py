"""s3s-fs, an S3 server on a folder (crates.io), as P2's second S3 server.

moto reads a whole object for every GET, a 32-byte range included, so
parallel ranged reads on moto measure moto. s3s-fs seeks its file and keeps
each object's ETag beside it, so a ranged GET costs what it returns.
``make bench-service`` installs it under .cache/s3s-fs.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

from tests.support.harness.net import LOOPBACK, free_port, wait_http
from tests.support.harness.processes import REPO_ROOT, Child
from tests.support.harness.s3 import ACCESS_KEY, SECRET_KEY, create_bucket

from bench.service import BenchError

DEFAULT_BINARY = REPO_ROOT / ".cache" / "s3s-fs" / "bin" / "s3s-fs"


async def start_s3s_fs(
    binary: Path, root: Path, bucket: str, logs: Path, cleanup: contextlib.ExitStack
) -> tuple[Child, str]:
    """``s3s-fs`` serving ``root`` on loopback with the harness's keys (the
    ones cdn.yaml names) and the bucket ``bucket``; returns it and its URL."""
    port = free_port()
    child = _spawn(binary, root, port, logs, cleanup)
    url = f"http://{LOOPBACK}:{port}"
    await wait_http(url, alive=child.check_alive)
    await asyncio.to_thread(create_bucket, url, bucket)
    return child, url


def _spawn(binary: Path, root: Path, port: int, logs: Path, cleanup: contextlib.ExitStack) -> Child:
    if not binary.is_file():
        raise BenchError(f"{binary} is missing: `make bench-service` installs s3s-fs")
    root.mkdir(parents=True, exist_ok=True)
    args = [str(binary), "--host", LOOPBACK, "--port", str(port)]
    args += ["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, str(root)]
    log_path = logs / "s3s-fs.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child("s3s-fs", process, log_path)
    cleanup.callback(child.stop)
    return child


def s3s_fs_version(binary: Path) -> str:
    """``s3s-fs 0.14.1``, as the binary tells it."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "s3s-fs (version unknown)"
