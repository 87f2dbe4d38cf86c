"""``edgeloader publish resource``: encrypt, split and upload a resource
through the same upload pipeline the loader's ``/upload`` uses."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from edgeloader import hardware
from edgeloader.config import Settings
from edgeloader.errors import InvalidRequest
from edgeloader.names import safe_folder, safe_name
from edgeloader.services.session import DeviceSession
from edgeloader.services.upload import upload_resource
from edgeloader.storage.files import read_file_chunks
from edgeloader.upstream.resource_api import ResourceApiClient

ENV_EMAIL = "EDGELOADER_PUBLISH_EMAIL"
ENV_PASSWORD = "EDGELOADER_PUBLISH_PASSWORD"  # noqa: S105 - the variable's name


def add_publish_resource(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = kinds.add_parser(
        "resource",
        help="encrypt, split and upload a resource (big part to the CDN, small part to the API)",
        description=(
            "Encrypt FILE under the resource key, upload the big part to the CDN bucket "
            "FOLDER and then the small part to the Resource API. Needs RESOURCE_API_URL "
            f"(or --api-url) and an uploader account: --email or ${ENV_EMAIL}; the "
            f"password from ${ENV_PASSWORD}, stdin (--password-stdin) or a prompt."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the resource to publish")
    parser.add_argument("--folder", default="models", help="folder / bucket (default: models)")
    parser.add_argument("--name", help="resource name (default: the file's name)")
    parser.add_argument("--api-url", help="Resource API base URL (default: $RESOURCE_API_URL)")
    parser.add_argument("--email", help=f"uploader's email (default: ${ENV_EMAIL})")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    parser.set_defaults(func=publish_resource)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get(ENV_PASSWORD):
        return os.environ[ENV_PASSWORD]
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    raise InvalidRequest(f"no password: use --password-stdin or ${ENV_PASSWORD}")


def publish_resource(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        raise InvalidRequest(f"no such file: {path}")
    name = safe_name(args.name or path.name)
    folder = safe_folder(args.folder)
    email = args.email or os.environ.get(ENV_EMAIL)
    if not email:
        raise InvalidRequest(f"no uploader account: use --email or ${ENV_EMAIL}")
    env: dict[str, Any] = dict(os.environ)
    if args.api_url:
        env["RESOURCE_API_URL"] = args.api_url
    settings = Settings.from_env(env)
    size = asyncio.run(publish_file(settings, email, _password(args), path, folder, name))
    print(f"published {folder}/{name}: {size} bytes", file=sys.stderr)
    return 0


async def publish_file(
    settings: Settings, email: str, password: str, path: Path, folder: str, name: str
) -> int:
    """Logs in and publishes one file; returns its size. Shows progress on a TTY."""
    total = (await asyncio.to_thread(path.stat)).st_size
    done = 0

    async def chunks() -> Any:
        nonlocal done
        async for chunk in read_file_chunks(path, settings.chunk_size):
            done += len(chunk)
            if sys.stderr.isatty():
                print(f"\r{done * 100 // max(total, 1)}% of {total} bytes", end="", file=sys.stderr)
            yield chunk

    async with aiohttp.ClientSession() as http:
        api = ResourceApiClient(settings.resource_api_url, http, timeout=settings.api_timeout)
        await api.login(email, password)
        session = DeviceSession(settings, api, hardware.fingerprint())
        try:
            staged = await upload_resource(session, folder, name, chunks())
        finally:
            await session.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return staged.plaintext_bytes
