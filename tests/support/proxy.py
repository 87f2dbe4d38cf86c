"""A TCP proxy on loopback that cuts each connection after a byte budget,
to make an upstream go away in the middle of a stream."""

from __future__ import annotations

import asyncio
import contextlib


class CuttingProxy:
    def __init__(self, target_host: str, target_port: int, budget: int) -> None:
        self.target = (target_host, target_port)
        self.budget = budget
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            upstream = asyncio.create_task(self._pipe(reader, up_writer, None))
            await self._pipe(up_reader, writer, self.budget)
            upstream.cancel()
            up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, budget: int | None
    ) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := await src.read(64 * 1024):
                if budget is not None and sent + len(data) > budget:
                    dst.write(data[: budget - sent])
                    await dst.drain()
                    self.cuts += 1
                    return
                dst.write(data)
                await dst.drain()
                sent += len(data)
