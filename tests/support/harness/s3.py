"""moto's S3 server on loopback, in this process or in one of its own, and
clients for it.

``python -m tests.support.harness.s3 --port N`` serves until terminated.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
from aiobotocore.session import get_session
from botocore.config import Config
from moto.server import ThreadedMotoServer

from tests.support.harness.net import LOOPBACK, free_port, wait_http
from tests.support.harness.processes import Child, spawn

REGION = "us-east-1"
#: What the harness's clients and ``cdn.yaml`` use; moto accepts any key.
ACCESS_KEY, SECRET_KEY = "edgeloader", "edgeloader-secret"


@contextlib.contextmanager
def s3_server(port: int = 0) -> Iterator[str]:
    """``ThreadedMotoServer`` on loopback (port 0: any free one); yields its URL."""
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        host, bound_port = server.get_host_and_port()
        yield f"http://{host}:{bound_port}"
    finally:
        server.stop()


async def start_s3_process(
    env: dict[str, str], logs: Path, cleanup: contextlib.ExitStack
) -> tuple[Child, str]:
    """The same server in a process of its own; returns it and its URL."""
    port = free_port()
    args = ["-m", "tests.support.harness.s3", "--port", str(port)]
    child = spawn("moto", args, env, logs, cleanup)
    url = f"http://{LOOPBACK}:{port}"
    await wait_http(url, alive=child.check_alive)
    return child, url


def s3_client(endpoint: str) -> Any:
    """A boto3 (blocking) S3 client."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@contextlib.asynccontextmanager
async def async_s3_client(endpoint: str, config: Config | None = None) -> AsyncIterator[Any]:
    """An aiobotocore S3 client."""
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=config,
    ) as s3:
        yield s3


def create_bucket(endpoint: str, bucket: str) -> None:
    """Creates ``bucket`` unless it exists (blocking)."""
    s3 = s3_client(endpoint)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)


def main() -> None:
    parser = argparse.ArgumentParser(description="moto's S3 server on loopback")
    parser.add_argument("--port", type=int, required=True)
    with s3_server(parser.parse_args().port):
        threading.Event().wait()


if __name__ == "__main__":
    main()
