"""Build contexts: staged on disk with a size cap, checked, then streamed to
the engine.

An uploaded context is written to a private file as it arrives (memory does
not grow with it), refused past the cap (413), and checked before the
engine sees it: it must be a tar archive with a ``Dockerfile`` at its root,
whose base images are all in the engine already, since builds have no
network and pull nothing (422 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import lzma
import os
import re
import secrets
import tarfile
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from edgeloader.errors import PayloadTooLarge, ValidationFailed
from edgeloader.storage.files import read_file_chunks
from edgeloader.storage.state_dir import ensure_private_dir

DOCKERFILE = "Dockerfile"
MAX_DOCKERFILE = 1 << 20
_INSTRUCTION = re.compile(r"\s*(\w+)\s*(.*)", re.DOTALL)
_ESCAPE_DIRECTIVE = re.compile(r"#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)


class StagedContext:
    """A build context on its way to the engine: a private temporary file."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.path = folder / f"context-{secrets.token_hex(8)}.tar"
        self.limit = limit
        self.size = 0

    async def fill(self, chunks: AsyncIterable[bytes]) -> None:
        """Writes the upload; :class:`PayloadTooLarge` past the limit."""
        fd = await asyncio.to_thread(
            os.open, self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        try:
            async for chunk in chunks:
                self.size += len(chunk)
                if self.size > self.limit:
                    raise PayloadTooLarge(f"build context larger than {self.limit} bytes")
                await asyncio.to_thread(_write_all, fd, chunk)
        finally:
            os.close(fd)

    def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        return read_file_chunks(self.path, chunk_size)

    def dockerfile(self) -> str:
        """The context's ``Dockerfile`` (blocking)."""
        return read_dockerfile(self.path)


@contextlib.asynccontextmanager
async def staged_context(folder: Path, limit: int) -> AsyncIterator[StagedContext]:
    await asyncio.to_thread(ensure_private_dir, folder)
    staged = StagedContext(folder, limit)
    try:
        yield staged
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(staged.path.unlink)


def read_dockerfile(path: Path) -> str:
    """The ``Dockerfile`` at the root of a (possibly compressed) tar archive."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name.removeprefix("./") != DOCKERFILE:
                    continue
                if not member.isfile():
                    raise ValidationFailed(f"the context's {DOCKERFILE} is not a regular file")
                if member.size > MAX_DOCKERFILE:
                    raise ValidationFailed(f"the context's {DOCKERFILE} is larger than 1 MiB")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has one
                return handle.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ValidationFailed(f"the build context must be a tar archive: {exc}") from None
    raise ValidationFailed(f"the build context has no {DOCKERFILE} at its root")


def base_images(dockerfile: str) -> list[str]:
    """The images a build starts from or copies out of, in order.

    Earlier stages (by name or index) and ``scratch`` are not images. A
    reference made of build arguments cannot be checked, so it is refused.
    """
    images: list[str] = []
    stages: set[str] = set()
    for instruction, args in _instructions(dockerfile):
        words = args.split()
        if instruction == "FROM":
            words = [w for w in words if not w.startswith("--")]
            if not words:
                raise ValidationFailed("Dockerfile: FROM without an image")
            ref = words[0]
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
        elif instruction == "COPY":
            sources = [w.split("=", 1)[1] for w in words if w.lower().startswith("--from=")]
            if not sources:
                continue
            ref = sources[0]
            if ref.isdigit():
                continue
        else:
            continue
        if "$" in ref:
            raise ValidationFailed(
                f"Dockerfile: {ref!r} uses a build argument; name the image itself"
            )
        if ref.lower() in stages or ref.lower() == "scratch" or ref in images:
            continue
        images.append(ref)
    return images


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    lines = dockerfile.splitlines()
    escape = "\\"
    for line in lines:  # parser directives come first, before anything else
        directive = _ESCAPE_DIRECTIVE.match(line.strip())
        if directive:
            escape = directive.group(1)
            continue
        break
    found: list[tuple[str, str]] = []
    current = ""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith(escape):
            current += stripped[: -len(escape)] + " "
            continue
        current += stripped
        match = _INSTRUCTION.match(current)
        if match:
            found.append((match.group(1).upper(), match.group(2).strip()))
        current = ""
    if current.strip():
        match = _INSTRUCTION.match(current)
        if match:
            found.append((match.group(1).upper(), match.group(2).strip()))
    return found


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
