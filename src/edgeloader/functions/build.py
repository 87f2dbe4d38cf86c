"""Build contexts: staged on disk with a size cap, checked, then streamed to
the engine.

An uploaded context is written to a private file as it arrives (memory does
not grow with it), refused past the cap (413), and checked before the
engine sees it (422 otherwise, naming the line):

- a tar archive (maybe compressed) whose *uncompressed* size is within the
  cap too, so a small gzip cannot unpack into gigabytes in the engine;
- exactly one ``Dockerfile`` at its root and no other build file the
  engine could prefer (``Containerfile``, ``dockerfile``);
- nothing in it reaches outside the box or the engine: builds have no
  network and pull nothing, so every image it starts from or copies out of
  is in the engine already and is named, not made of build arguments; no
  ``ADD`` from a URL or a git repository; ``RUN --mount`` only of
  ``type=tmpfs`` (a bind, cache, secret or ssh mount reaches the host);
  no ``# syntax=`` directive (a frontend image from a registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
_SYNTAX_DIRECTIVE = re.compile(r"^\s*#\s*syntax\s*=", re.IGNORECASE)
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@)", re.IGNORECASE)
_TMPFS_MOUNT = re.compile(r"(?:^--mount=|,)type=tmpfs(?:,|$)", re.IGNORECASE)
#: The build files an engine looks for; only ``Dockerfile`` may be there.
_BUILD_FILES = {"dockerfile", "containerfile"}


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
        return read_dockerfile(self.path, self.limit)


@contextlib.asynccontextmanager
async def staged_context(folder: Path, limit: int) -> AsyncIterator[StagedContext]:
    await asyncio.to_thread(ensure_private_dir, folder)
    staged = StagedContext(folder, limit)
    try:
        yield staged
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(staged.path.unlink)


def read_dockerfile(path: Path, limit: int) -> str:
    """The ``Dockerfile`` at the root of a (possibly compressed) tar archive
    of at most ``limit`` bytes unpacked (the whole archive is read)."""
    found: str | None = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.size > limit or tar.offset > limit:
                    raise PayloadTooLarge(f"build context larger than {limit} bytes unpacked")
                name = member.name.removeprefix("./")
                if name.lower() in _BUILD_FILES and name != DOCKERFILE:
                    raise ValidationFailed(
                        f"the build context holds {name}: only a {DOCKERFILE} is used, "
                        "remove the other"
                    )
                if name != DOCKERFILE:
                    continue
                if found is not None:
                    raise ValidationFailed(f"the build context holds two {DOCKERFILE} members")
                if not member.isfile():
                    raise ValidationFailed(f"the context's {DOCKERFILE} is not a regular file")
                if member.size > MAX_DOCKERFILE:
                    raise ValidationFailed(f"the context's {DOCKERFILE} is larger than 1 MiB")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has one
                found = handle.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ValidationFailed(f"the build context must be a tar archive: {exc}") from None
    if found is None:
        raise ValidationFailed(f"the build context has no {DOCKERFILE} at its root")
    return found


def check_dockerfile(dockerfile: str) -> list[str]:
    """The images a build starts from or copies out of, in order, once
    nothing in it reaches outside (module docstring); 422 naming the line.

    Earlier stages (by name or index) and ``scratch`` are not images.
    """
    for number, text in enumerate(dockerfile.splitlines(), 1):
        if not text.strip().startswith("#"):
            break  # parser directives are the leading comment lines
        if _SYNTAX_DIRECTIVE.match(text):
            raise ValidationFailed(
                f"Dockerfile line {number}: a syntax directive names an image to pull"
            )
    images: list[str] = []
    stages: set[str] = set()
    seen_from = False
    for line, instruction, args in _instructions(dockerfile):
        where = f"Dockerfile line {line}"
        words = args.split()
        ref = None
        if instruction == "ARG" and not seen_from:
            raise ValidationFailed(
                f"{where}: ARG before FROM: name the base image itself, not a build argument"
            )
        if instruction == "FROM":
            seen_from = True
            if "$" in args:
                raise ValidationFailed(f"{where}: FROM uses a build argument; name the image")
            words = [w for w in words if not w.startswith("--")]
            if not words:
                raise ValidationFailed(f"{where}: FROM without an image")
            ref = words[0]
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
        elif instruction in ("COPY", "ADD"):
            options = [w for w in words if w.startswith("--")]
            sources = _sources(args, words)
            if instruction == "ADD" and any(_REMOTE.match(src) for src in sources):
                raise ValidationFailed(
                    f"{where}: ADD from a URL or a repository: builds have no network; "
                    "put the file in the context"
                )
            froms = [o.split("=", 1)[1] for o in options if o.lower().startswith("--from=")]
            if froms and not froms[0].isdigit():
                ref = froms[0]
                if "$" in ref:
                    raise ValidationFailed(f"{where}: --from uses a build argument")
        elif instruction == "RUN":
            for option in words:
                if not option.startswith("--"):
                    break
                if option.lower().startswith("--mount=") and not _TMPFS_MOUNT.search(option):
                    raise ValidationFailed(
                        f"{where}: RUN --mount other than type=tmpfs reaches the host"
                    )
        if ref is None or ref.lower() in stages or ref.lower() == "scratch" or ref in images:
            continue
        images.append(ref)
    return images


def _sources(args: str, words: list[str]) -> list[str]:
    """The sources of a COPY or ADD, in either form (JSON array or words)."""
    rest = " ".join(w for w in words if not w.startswith("--"))
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            raise ValidationFailed(f"Dockerfile: cannot read {args!r}") from None
        if isinstance(parsed, list):
            return [str(item) for item in parsed[:-1]]
    return rest.split()[:-1]


def _instructions(dockerfile: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments), continuation lines joined; the line
    is where the instruction starts."""
    lines = dockerfile.splitlines()
    escape = "\\"
    for line in lines:  # parser directives come first, before anything else
        directive = _ESCAPE_DIRECTIVE.match(line.strip())
        if directive:
            escape = directive.group(1)
            continue
        break
    found: list[tuple[int, str, str]] = []
    current, start = "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if not current:
            start = number
        if stripped.endswith(escape):
            current += stripped[: -len(escape)] + " "
            continue
        current += stripped
        match = _INSTRUCTION.match(current)
        if match:
            found.append((start, match.group(1).upper(), match.group(2).strip()))
        current = ""
    if current.strip():
        match = _INSTRUCTION.match(current)
        if match:
            found.append((start, match.group(1).upper(), match.group(2).strip()))
    return found


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
