"""Ranged reads of the CDN client over HTTP: woken once a piece has arrived
(:class:`edgeloader.upstream.cdn.Wakeup`), and every connection handed back
to the pool ready for the next answer. On moto the reads go through a link
paced at 20 MB/s, so the reader waits for the server (moto alone outruns
it, and the bytes would always be waiting). moto closes each connection
after its answer, so the pool is tested against a small keep-alive origin."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from edgeloader.errors import CdnError
from edgeloader.upstream.cdn import Cdn, CdnConfig
from tests.support.harness.s3 import s3_client
from tests.support.proxy import CuttingProxy
from tests.support.stack import CDN_KEYS, pattern

BUCKET = "wakeups"
PIECE = 256 * 1024


def paced(endpoint: str) -> CuttingProxy:
    url = urlsplit(endpoint)
    assert url.hostname is not None
    assert url.port is not None
    return CuttingProxy(url.hostname, url.port, rate=20_000_000)


async def test_reads_after_woken_reads_find_their_connection_ready(s3_endpoint: str) -> None:
    data = pattern(6 * 1024 * 1024 + 5)
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="big", Body=data)
    async with paced(s3_endpoint) as link, Cdn(CdnConfig(host=link.url, **CDN_KEYS)) as cdn:
        for start in (0, 1_000_003, len(data) - 8 * PIECE - 7):
            found = await cdn.open_range(BUCKET, "big", start, None)
            assert found.wakeup is not None  # plain HTTP: reads wait for pieces
            got = bytearray()
            thresholds = set()
            try:
                # As a load reads: up to the answer's last byte, with no
                # read past it that would see the end.
                while len(got) < found.length:
                    got += await found.read(min(PIECE, found.length - len(got)))
                    thresholds.add(found.wakeup.threshold)
            finally:
                found.close()
            assert bytes(got) == data[start:]
            assert max(thresholds) > 1
            assert found.wakeup.threshold == 1  # set back as the answer ended
            # moto closes every connection, so this tail comes on a new one
            # (the pooled case is the keep-alive test below).
            async with asyncio.timeout(20):
                _, tail = await cdn.tail(BUCKET, "big", 32)
            assert tail == data[-32:]


async def test_a_read_closed_halfway_leaves_the_next_one_whole(s3_endpoint: str) -> None:
    data = pattern(3 * 1024 * 1024)
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="half", Body=data)
    async with paced(s3_endpoint) as link, Cdn(CdnConfig(host=link.url, **CDN_KEYS)) as cdn:
        found = await cdn.open_range(BUCKET, "half", 0, None)
        await found.read(PIECE)
        await found.read(PIECE)
        found.close()
        async with asyncio.timeout(20):
            again = await cdn.open_range(BUCKET, "half", 5, 100)
            got = bytearray()
            while piece := await again.read(PIECE):
                got += piece
            again.close()
        assert bytes(got) == data[5:101]


async def test_a_link_cut_while_the_reader_waits_for_a_piece_is_an_error_at_once(
    s3_endpoint: str,
) -> None:
    """A threshold never hides the end of a connection: the cut wakes the
    read, which fails at once (not at the stall timeout), and the next read
    on the client is whole."""
    data = pattern(4 * 1024 * 1024)
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="cut", Body=data)
    url = urlsplit(s3_endpoint)
    assert url.hostname is not None
    assert url.port is not None
    cut = 2 * 1024 * 1024 + 1000
    proxy = CuttingProxy(url.hostname, url.port, rate=20_000_000, cut_at=[cut])
    async with proxy as link, Cdn(CdnConfig(host=link.url, **CDN_KEYS)) as cdn:
        found = await cdn.open_range(BUCKET, "cut", 0, None)
        assert found.wakeup is not None
        got = bytearray()
        thresholds = set()

        async def read_on() -> None:
            assert found.wakeup is not None
            async with asyncio.timeout(10):
                while len(got) < found.length:
                    got.extend(await found.read(min(PIECE, found.length - len(got))))
                    thresholds.add(found.wakeup.threshold)

        with pytest.raises(CdnError):
            await read_on()
        found.close()
        assert max(thresholds) > 1  # the cut came while a threshold was set
        assert bytes(got) == data[: len(got)]
        assert proxy.cuts == 1
        async with asyncio.timeout(20):
            again = await cdn.open_range(BUCKET, "cut", 7, 1_000_006)
            whole = bytearray()
            while len(whole) < again.length:
                whole += await again.read(min(PIECE, again.length - len(whole)))
            again.close()
        assert bytes(whole) == data[7:1_000_007]


@contextlib.asynccontextmanager
async def keep_alive_origin(data: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """An origin that answers ranged GETs of one object and keeps its
    connections open between answers, as S3 and s3s-fs do (moto's server
    closes each one, so nothing is ever reused there). Bodies go out in
    16 KiB writes at about 16 MB/s, so a reader waits for them. Yields its
    URL and the peer ports it served, one per request."""
    ports: list[int] = []

    async def get(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ports.append(peer[1] if peer else 0)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("Range", ""))
        assert match is not None
        first, last = match.groups()
        if not first:
            start, end = len(data) - int(last), len(data) - 1
        else:
            start, end = int(first), int(last) if last else len(data) - 1
        response = web.StreamResponse(status=206)
        response.headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        response.headers["ETag"] = '"fixed"'
        response.content_length = end - start + 1
        await response.prepare(request)
        for at in range(start, end + 1, 16 * 1024):
            await response.write(data[at : min(at + 16 * 1024, end + 1)])
            await asyncio.sleep(0.001)
        return response

    app = web.Application()
    app.router.add_get("/{bucket}/{key}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", ports
    finally:
        await runner.cleanup()


async def test_a_pooled_connection_serves_a_short_answer_after_a_woken_read() -> None:
    """The threshold a read leaves on its socket is 1 again before the pool
    takes the connection back: the 32-byte answer that follows on the same
    connection would otherwise never reach it, and wait for the timeout."""
    data = pattern(2 * 1024 * 1024 + 11)
    async with keep_alive_origin(data) as (url, ports), Cdn(CdnConfig(host=url, **CDN_KEYS)) as cdn:
        for start in (0, 333_333):
            found = await cdn.open_range("bucket", "obj", start, None)
            assert found.wakeup is not None
            got = bytearray()
            while len(got) < found.length:
                got.extend(await found.read(min(PIECE, found.length - len(got))))
            found.close()
            assert bytes(got) == data[start:]
            async with asyncio.timeout(10):
                _, tail = await cdn.tail("bucket", "obj", 32)
            assert tail == data[-32:]
    assert len(set(ports)) == 1  # every answer came on the one connection
