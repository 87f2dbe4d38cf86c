"""File reading for the event loop: chunks read in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path


async def read_file_chunks(path: Path, chunk_size: int) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, read off the event loop."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, chunk_size):
            yield data
    finally:
        handle.close()
