"""Ranged reads of the CDN client on moto's server over HTTP: woken once a
piece has arrived (:class:`edgeloader.upstream.cdn.Wakeup`), and every
connection handed back to the pool ready for the next answer. The reads go
through a link paced at 20 MB/s, so the reader waits for the server (moto
alone outruns it, and the bytes would always be waiting)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

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
            # The next answer on the pooled connection is 32 bytes: a
            # threshold left behind would hold its headers until the timeout.
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
