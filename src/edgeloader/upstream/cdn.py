"""Client of the S3-compatible CDN that serves the big parts (aiobotocore).

Reads use the downloader credentials. Loads read ranges
(:meth:`Cdn.open_range`, whose answers are checked against the range asked
for and can be pinned to one version of the object with ``If-Match``);
``services/download.py`` decides which ranges, in parallel and resumed.
Writes use the uploader credentials and a multipart upload, so memory stays
at one part whatever the object's size.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from edgeloader.config import CdnOverrides
from edgeloader.errors import CdnError, ConfigError, NotFound, ObjectChanged

log = logging.getLogger(__name__)

_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
# ``If-Match`` failed: the object is not the one a read started on.
_CHANGED_CODES = {"PreconditionFailed", "412"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
# S3 refuses multipart parts under 5 MiB, except the last.
MIN_PART_SIZE = 5 << 20
# S3 copies an object in one request only up to 5 GiB; beyond, in parts.
MAX_SINGLE_COPY = 5 << 30
COPY_PART_SIZE = 1 << 30
# Connections per client. A load's current part holds one at its client's
# pace (aiobotocore's default of 10 would let ten slow clients hold them
# all); how much is read at once is bounded by the budget of CDN bytes
# (services/download.py), not by this.
MAX_POOL = 32


# One botocore session for the process: its loader keeps what it parsed
# (the S3 model and endpoint rules, about 12 MB in memory), so only the first
# client pays for parsing, and :func:`preload_models` makes that start-up.
_boto_session = get_session()


async def preload_models() -> None:
    """Parses the S3 client's model now, at start-up, instead of during the
    first load: a client is made and closed without sending anything."""
    async with _boto_session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="preload",
        aws_secret_access_key="preload",  # noqa: S106 - no request is ever sent
        config=Config(s3={"addressing_style": "path"}),
    ):
        pass


@dataclass(frozen=True)
class CdnConfig:
    host: str
    downloader_access_key: str
    downloader_access_secret: str
    uploader_access_key: str
    uploader_access_secret: str
    region: str = "us-east-1"

    @classmethod
    def resolve(cls, yaml_text: str | None, overrides: CdnOverrides) -> CdnConfig:
        """``cdn.yaml`` (docs/protocol.md) with the environment's overrides on top."""
        doc: dict[str, Any] = {}
        if yaml_text:
            try:
                loaded = yaml.safe_load(yaml_text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"cdn.yaml is not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError("cdn.yaml must be a mapping")
            doc = loaded
        names = (
            "host",
            "downloader_access_key",
            "downloader_access_secret",
            "uploader_access_key",
            "uploader_access_secret",
        )
        values = {n: getattr(overrides, n) or doc.get(n) for n in names}
        missing = [n for n, v in values.items() if not v]
        if missing:
            raise ConfigError(f"CDN settings missing: {', '.join(missing)}")
        return cls(**{n: str(v) for n, v in values.items()}, region=overrides.region)

    @staticmethod
    def complete_without_yaml(overrides: CdnOverrides) -> bool:
        """True when the environment alone configures the CDN."""
        return all(
            (
                overrides.host,
                overrides.downloader_access_key,
                overrides.downloader_access_secret,
                overrides.uploader_access_key,
                overrides.uploader_access_secret,
            )
        )


@contextlib.contextmanager
def _mapped(what: str) -> Any:
    """Maps botocore and transport errors to ours."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING_CODES:
            raise NotFound(f"{what}: not found on the CDN") from None
        if code in _CHANGED_CODES:
            raise ObjectChanged(f"{what}: the object changed on the CDN") from None
        raise CdnError(f"CDN refused {what}: {code or exc}") from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        # The endpoint and the exception go to the log only.
        log.warning("CDN unreachable during %s: %r", what, exc)
        raise CdnError(f"CDN unreachable during {what}") from exc


class CdnObject:
    """An object being read: its size, and its bytes as a stream."""

    def __init__(self, what: str, size: int, body: Any) -> None:
        self.size = size
        self._what = what
        self._body = body

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        with _mapped(self._what):
            async for chunk in self._body.iter_chunks(chunk_size):
                yield chunk

    def close(self) -> None:
        """Releases the connection; stops an unfinished read."""
        self._body.close()


class CdnRange:
    """A ranged read in progress: ``length`` bytes from ``start`` of an
    object of ``total`` bytes whose version is ``etag``."""

    def __init__(self, what: str, start: int, length: int, total: int, etag: str, body: Any):
        self.what = what
        self.start = start
        self.length = length
        self.total = total
        self.etag = etag
        self._body = body
        #: When the reader is woken (None: at every arrival, as over TLS).
        self.wakeup = Wakeup.of(body, length)

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (what has arrived); b"" at the end. A cut
        connection is a :class:`CdnError`."""
        if self.wakeup is not None:
            self.wakeup.before(size)
        with _mapped(self.what):
            data: bytes = await self._body.read(size)
        if self.wakeup is not None:
            self.wakeup.after(len(data))
        return data

    def close(self) -> None:
        """Releases the connection; stops an unfinished read."""
        self._body.close()


class Wakeup:
    """When the kernel wakes the reader of one plain-HTTP answer: once a
    piece worth handling has arrived (``SO_RCVLOWAT``), not at every few
    kilobytes the server writes.

    A server that sends in small writes (s3s-fs: about 42 KiB a wake-up on
    loopback) otherwise costs a pass through the event loop, the HTTP parser
    and every stage of a load per few kilobytes: reading and hashing 256 MiB
    from s3s-fs took 3.05 CPU s/GB that way and 1.69 in whole 256 KiB pieces
    (docs/performance.md, P2 round 4, ``--only receive``).

    The threshold never exceeds what the answer still owes, nor
    ``WAKE_AFTER`` seconds of its own rate, so a slow answer is not held back
    (nor taken for a stalled one); the first piece is read as it comes, so
    its wait stays a true first-byte time (services/width.py). Before the
    connection goes back to the pool the threshold is 1 again: the next
    answer's headers must not wait for it. Over TLS a threshold on the
    socket's bytes says nothing exact about the answer's, so none is set.
    """

    WAKE_AFTER = 0.05

    def __init__(
        self, sock: Any, content: Any, length: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sock = sock  # asyncio's view of the connection's socket
        self._content = content  # aiohttp's StreamReader of the body
        self._length = length
        self._delivered = 0
        self._first: tuple[float, int] | None = None  # when, and bytes by then
        self.threshold = 1  # SO_RCVLOWAT as last set
        self._clock = clock

    @classmethod
    def of(cls, body: Any, length: int) -> Wakeup | None:
        """The wake-up of an aiobotocore body, if its connection allows one."""
        response: Any = getattr(body, "_raw_stream", None)  # aiohttp's ClientResponse
        connection = getattr(response, "connection", None)
        transport = getattr(connection, "transport", None)
        if connection is None or transport is None or length <= 0:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None:
            return None
        if not hasattr(socket, "SO_RCVLOWAT"):
            return None
        wakeup = cls(sock, response.content, length)
        connection.add_callback(wakeup.release)
        return wakeup

    def before(self, size: int) -> None:
        """Sets the threshold for a read of up to ``size`` bytes."""
        if self._first is None:
            return
        received = self._content.total_bytes
        if received > self._delivered:
            return  # bytes are waiting: the read returns at once
        when, at = self._first
        elapsed = self._clock() - when
        rate = (self._delivered - at) / elapsed if elapsed > 0 else 0.0
        owed = self._length - received
        self._set(max(1, min(size, owed, int(rate * self.WAKE_AFTER))))

    def after(self, n: int) -> None:
        self._delivered += n
        if self._first is None and n:
            self._first = (self._clock(), self._delivered)

    def release(self) -> None:
        """The connection is let go (the answer ended or was closed)."""
        self._set(1)

    def _set(self, threshold: int) -> None:
        if threshold == self.threshold:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, threshold)
        except OSError:
            return  # a closed socket: nothing waits on it any more
        self.threshold = threshold


class Cdn:
    """Both CDN clients; use as an async context manager."""

    def __init__(self, config: CdnConfig, *, connect_timeout: float = 10.0) -> None:
        self.config = config
        self._boto = Config(
            connect_timeout=connect_timeout,
            read_timeout=60,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
            max_pool_connections=MAX_POOL,
        )
        self._stack = contextlib.AsyncExitStack()
        self._reader: Any = None
        self._writer: Any = None

    async def __aenter__(self) -> Cdn:
        session = _boto_session
        common = {
            "endpoint_url": self.config.host,
            "region_name": self.config.region,
            "config": self._boto,
        }
        self._reader = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                aws_access_key_id=self.config.downloader_access_key,
                aws_secret_access_key=self.config.downloader_access_secret,
                **common,
            )
        )
        self._writer = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                aws_access_key_id=self.config.uploader_access_key,
                aws_secret_access_key=self.config.uploader_access_secret,
                **common,
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def tail(self, bucket: str, key: str, length: int) -> tuple[CdnRange, bytes]:
        """The object's last ``length`` bytes (all of it if shorter), with
        the read that gave them (its ``total`` size and ``etag``).

        Only a 206 answer of at most ``length`` bytes is read: a CDN that
        ignores ``Range`` would otherwise send the whole object here.
        """
        found = await self.open_range(bucket, key, suffix=length)
        data = b""
        try:
            while len(data) <= found.length and (more := await found.read(length + 1)):
                data += more
        finally:
            found.close()
        if len(data) != found.length:
            raise CdnError(f"the CDN cut a ranged read of {bucket}/{key}")
        return found, data

    async def open_range(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        suffix: int | None = None,
        if_match: str | None = None,
    ) -> CdnRange:
        """Starts a ranged read: bytes ``start`` to ``end`` (inclusive; None:
        to the end), or the last ``suffix`` bytes. With ``if_match`` (an
        ETag) a changed object is :class:`ObjectChanged`. The caller must
        ``close()`` the answer.

        Anything but a 206 whose ``Content-Range`` is the range asked for is
        refused unread: a CDN that ignored ``Range`` would send the whole
        object, and one that answered another range would shift every byte.
        """
        what = f"read of {bucket}/{key}"
        wanted = f"-{suffix}" if suffix is not None else f"{start}-{'' if end is None else end}"
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={wanted}"}
        if if_match is not None:
            params["IfMatch"] = if_match
        with _mapped(what):
            resp = await self._reader.get_object(**params)
        body = resp["Body"]
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        match = _CONTENT_RANGE.fullmatch(resp.get("ContentRange") or "")
        sent = int(resp.get("ContentLength") or 0)
        if status != 206 or match is None:
            body.close()
            raise CdnError(f"the CDN ignored a ranged read of {bucket}/{key}")
        first, last, total = (int(g) for g in match.groups())
        expected_first = max(total - suffix, 0) if suffix is not None else start
        if (
            first != expected_first
            or (end is not None and last > end)
            or (suffix is not None and last != total - 1)
            or sent != last - first + 1
        ):
            body.close()
            raise CdnError(f"the CDN answered another range of {bucket}/{key}")
        return CdnRange(what, first, sent, total, str(resp.get("ETag") or ""), body)

    async def get(self, bucket: str, key: str) -> CdnObject:
        """Starts a read of the whole object; the caller must ``close()`` it."""
        what = f"read of {bucket}/{key}"
        with _mapped(what):
            resp = await self._reader.get_object(Bucket=bucket, Key=key)
        return CdnObject(what, int(resp.get("ContentLength") or 0), resp["Body"])

    async def upload(
        self, bucket: str, key: str, chunks: AsyncIterable[bytes], part_size: int
    ) -> int:
        """Uploads a stream; a multipart upload unless it fits in one part.

        On any failure the multipart upload is aborted, so no half object
        and no orphaned parts remain.
        """
        part_size = max(part_size, MIN_PART_SIZE)
        what = f"upload of {bucket}/{key}"
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        total = 0
        try:
            async for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                while len(buffer) >= part_size:
                    if upload_id is None:
                        with _mapped(what):
                            created = await self._writer.create_multipart_upload(
                                Bucket=bucket, Key=key
                            )
                        upload_id = created["UploadId"]
                    piece = bytes(buffer[:part_size])
                    del buffer[:part_size]
                    parts.append(
                        await self._put_part(bucket, key, upload_id, len(parts) + 1, piece)
                    )
            with _mapped(what):
                if upload_id is None:
                    await self._writer.put_object(Bucket=bucket, Key=key, Body=bytes(buffer))
                    return total
                if buffer:
                    parts.append(
                        await self._put_part(bucket, key, upload_id, len(parts) + 1, bytes(buffer))
                    )
                await self._writer.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            return total
        except BaseException:
            if upload_id is not None:
                await self._abort(bucket, key, upload_id)
            raise

    async def copy(
        self,
        bucket: str,
        source: str,
        target: str,
        size: int,
        *,
        single_copy_max: int = MAX_SINGLE_COPY,
        part_size: int = COPY_PART_SIZE,
    ) -> None:
        """Copies ``source`` over ``target`` on the CDN itself (no bytes
        through the box): one request, or a multipart copy of ranges for
        objects over ``single_copy_max``. The target changes at once, whole."""
        what = f"copy of {bucket}/{source} to {target}"
        copy_source = {"Bucket": bucket, "Key": source}
        if size <= single_copy_max:
            with _mapped(what):
                await self._writer.copy_object(Bucket=bucket, Key=target, CopySource=copy_source)
            return
        with _mapped(what):
            created = await self._writer.create_multipart_upload(Bucket=bucket, Key=target)
        upload_id = created["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(start + part_size, size) - 1
                with _mapped(f"{what} part {number}"):
                    resp = await self._writer.upload_part_copy(
                        Bucket=bucket,
                        Key=target,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=copy_source,
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                parts.append({"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]})
            with _mapped(what):
                await self._writer.complete_multipart_upload(
                    Bucket=bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            await self._abort(bucket, target, upload_id)
            raise

    async def delete(self, bucket: str, key: str) -> None:
        with _mapped(f"delete of {bucket}/{key}"):
            await self._writer.delete_object(Bucket=bucket, Key=key)

    async def _put_part(
        self, bucket: str, key: str, upload_id: str, number: int, data: bytes
    ) -> dict[str, Any]:
        with _mapped(f"upload of {bucket}/{key} part {number}"):
            resp = await self._writer.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    async def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            await self._writer.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # the original error matters more; S3 expires orphans too
            log.warning("could not abort multipart upload of %s/%s", bucket, key, exc_info=True)
