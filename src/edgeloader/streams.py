"""Helpers for async streams of chunks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar, cast

__all__ = ["read_ahead"]

T = TypeVar("T")

_END = object()


async def read_ahead(source: AsyncIterator[T], depth: int) -> AsyncGenerator[T, None]:
    """The items of ``source``, in order, produced up to ``depth`` ahead by a
    task of their own, so that making the next overlaps using this one
    (reading and decrypting the next chunk while this one is being sent).

    At most ``depth`` items wait, plus one in the making. An error of the
    source is raised here after the items before it. Leaving early cancels
    the task and closes the source before this generator closes.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(depth)

    async def produce() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except Exception as exc:  # handed to the consumer, in order
            await queue.put(_Failure(exc))
        else:
            await queue.put(_END)
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    task = asyncio.create_task(produce(), name="read-ahead")
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield cast(T, item)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Failure:
    def __init__(self, error: Exception) -> None:
        self.error = error
