"""``edgeloader load`` and ``edgeloader upload``: models streamed through
the service, never held in memory whole."""

from __future__ import annotations

import argparse
import asyncio
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp.payload import AsyncIterablePayload

from edgeloader.cli.client import ApiError, Client, read_json
from edgeloader.cli.commands.common import Subcommands, format_bytes, with_client
from edgeloader.cli.output import Console, Progress, UsageError
from edgeloader.errors import EdgeloaderError
from edgeloader.storage.files import AtomicFile

__all__ = ["add_resource_commands"]

DEFAULT_FOLDER = "models"
CHUNK = 256 * 1024
#: Plaintext models are proprietary: the file is the user's alone.
OUTPUT_MODE = 0o600


class LoadCut(EdgeloaderError):
    """The load was cut."""


def add_resource_commands(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    load = commands.add_parser(
        "load",
        parents=[parent],
        help="load a model through the service (decrypted) into a file or stdout",
        description=(
            "Stream resource NAME from the service (POST /load/NAME) into FILE, which "
            "appears complete or not at all (mode 0600), or to stdout. A load that is cut "
            "midway leaves no file and fails."
        ),
    )
    load.add_argument("name", metavar="NAME", help="the resource's name")
    load.add_argument("--folder", default=DEFAULT_FOLDER, help="its folder (default: models)")
    load.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write it (a folder: FOLDER/NAME); default or '-': stdout",
    )
    load.set_defaults(func=with_client(load_command))

    upload = commands.add_parser(
        "upload",
        parents=[parent],
        help="encrypt and publish a file through the service",
        description=(
            "Stream FILE to the service (POST /upload/NAME), which encrypts it, puts the "
            "big part on the CDN and posts the small part to the Resource API."
        ),
    )
    upload.add_argument("file", metavar="FILE", type=Path, help="the file to upload")
    upload.add_argument("--name", help="the resource's name (default: FILE's name)")
    upload.add_argument("--folder", default=DEFAULT_FOLDER, help="its folder (default: models)")
    upload.set_defaults(func=with_client(upload_command))


def _target(output: str | None, name: str) -> Path | None:
    """The file to write, or None for stdout."""
    if output in (None, "-"):
        return None
    path = Path(output)
    if path.is_dir():
        path = path / name
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such folder")
    return path


async def load_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    name, folder = args.name, args.folder
    target = _target(args.output, name)
    if target is None:
        if out.json_mode:
            raise UsageError("--json needs -o FILE: stdout carries the model")
        if sys.stdout.isatty():
            raise UsageError("refusing to write a binary model to a terminal: pass -o FILE")
    body = {"filename": name, "folder": folder}
    async with client.request("POST", f"/load/{quote(name, safe='')}", json=body) as resp:
        total = resp.content_length
        progress = out.progress("load", total)
        try:
            if target is None:
                done = await _copy(resp, sys.stdout.buffer.write, progress)
                sys.stdout.buffer.flush()
            else:
                with AtomicFile(target, OUTPUT_MODE) as sink:
                    done = await _copy(resp, sink.write, progress)
                    if total is not None and done != total:
                        raise LoadCut(f"the load of {folder}/{name} ended early")
                    await asyncio.to_thread(sink.commit)
        finally:
            progress.close()
    if target is None:  # stdout carries the model: the summary goes to stderr
        out.note(f"loaded {folder}/{name} ({format_bytes(done)})")
        return 0
    out.result(
        {"name": name, "folder": folder, "bytes": done, "output": str(target)},
        f"loaded {folder}/{name} ({format_bytes(done)}) into {target}",
    )
    return 0


async def _copy(
    resp: aiohttp.ClientResponse, write: Callable[[bytes], object], progress: Progress
) -> int:
    """The body into ``write``, chunk by chunk; a cut body is :class:`LoadCut`."""
    done = 0
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            write(chunk)
            done += len(chunk)
            progress.advance(len(chunk))
    except aiohttp.ClientPayloadError:
        expected = f" of {resp.content_length}" if resp.content_length is not None else ""
        raise LoadCut(
            f"the service cut the load after {done}{expected} bytes (see the service's log)"
        ) from None
    return done


async def _file_chunks(path: Path, progress: Progress) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, CHUNK):
            progress.advance(len(data))
            yield data
    finally:
        handle.close()


def _file_size(path: Path) -> int:
    """The size of the file to upload; a missing one is a usage error."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{path}: not a file")
    return info.st_size


async def upload_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    path: Path = args.file
    size = _file_size(path)
    name = args.name or path.name
    progress = out.progress("upload", size)

    def form() -> aiohttp.MultipartWriter:
        # Built anew for each attempt: a refused token is refreshed and the
        # file sent again from its start.
        writer = aiohttp.MultipartWriter("form-data")
        writer.append(args.folder).set_content_disposition("form-data", name="folder")
        data = AsyncIterablePayload(
            _file_chunks(path, progress), content_type="application/octet-stream"
        )
        data.set_content_disposition("form-data", name="data", filename=name)
        writer.append_payload(data)
        return writer

    try:
        async with client.request("POST", f"/upload/{quote(name, safe='')}", body=form) as resp:
            progress.close()
            answer = await read_json(resp)
    finally:
        progress.close()
    if not isinstance(answer, dict):
        raise ApiError(200, "the answer is not a JSON object")
    out.result(
        answer,
        f"uploaded {path} as {answer.get('folder')}/{answer.get('filename')} "
        f"({format_bytes(int(answer.get('size') or 0))})",
    )
    return 0
