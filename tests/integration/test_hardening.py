"""What an attack on the running service found, fixed, on the real stack:
the cache, uploads that fail or race, the audit of loads, malformed
requests and a CDN that ignores ranges."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import OPERATOR, Stack, pattern, s3_client, wait_for
from tests.support.harness.net import free_port, wait_http
from tests.support.harness.processes import clean_env

# -- the cache --------------------------------------------------------------------------


def entry_of(stack: Stack, name: str) -> Path:
    entries = [p for p in (stack.tmp / "cache" / stack.bucket / name).iterdir()]
    assert len(entries) == 1, entries
    return entries[0]


async def cached(stack: Stack, name: str, data: bytes) -> Path:
    stack.publish(name, data)
    await stack.login()
    assert await stack.load(name) == (200, data)
    folder = stack.tmp / "cache" / stack.bucket / name

    async def committed() -> bool:
        return [p.suffix for p in folder.iterdir()] == [".big"]

    await wait_for(committed, within=10)
    return entry_of(stack, name)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def folder_in_its_place(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inner").write_bytes(b"x")


@pytest.mark.parametrize("damage", [flip_last_byte, truncate, empty, folder_in_its_place])
async def test_a_damaged_cache_entry_is_dropped_and_the_cdn_serves(
    stack: Stack, damage: Callable[[Path], None]
) -> None:
    data = pattern(300_000)
    entry = await cached(stack, "m.bin", data)
    damage(entry)
    assert await stack.load("m.bin") == (200, data)
    assert await stack.load("m.bin") == (200, data)


async def test_a_byte_flipped_in_the_middle_of_an_entry_is_never_served_whole(
    stack: Stack,
) -> None:
    data = pattern(3 * 1024 * 1024)
    entry = await cached(stack, "m.bin", data)
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    entry.write_bytes(bytes(raw))
    status, length, received, was_cut = await stack.load_until_cut("m.bin")
    assert (status, length, was_cut) == (200, len(data), True)
    assert len(received) < len(data)
    # The entry was dropped: the next load comes from the CDN, whole.
    assert await stack.load("m.bin") == (200, data)


async def test_partial_files_are_removed_at_start(stack: Stack) -> None:
    folder = stack.tmp / "cache" / stack.bucket / "m.bin"
    folder.mkdir(parents=True)
    leftover = folder / ".abc.big.1234abcd.partial"
    leftover.write_bytes(b"half a download")
    await stack.start_loader()
    assert not leftover.exists()


async def test_a_symlinked_cache_folder_is_never_followed(stack: Stack, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "m.bin").mkdir(parents=True)
    precious = victim / "m.bin" / ("a" * 32 + "-" + "b" * 64 + ".big")
    precious.write_bytes(b"someone else's file")
    (stack.tmp / "cache").mkdir(exist_ok=True)
    (stack.tmp / "cache" / stack.bucket).symlink_to(victim)
    data = pattern(50_000)
    stack.publish("m.bin", data)
    await stack.login()
    assert await stack.load("m.bin") == (200, data)
    assert await stack.load("m.bin") == (200, data)
    assert precious.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in (victim / "m.bin").iterdir()) == [precious.name]


# -- the audit of loads -----------------------------------------------------------------


async def audit_outcomes(stack: Stack, action: str) -> list[str]:
    from edgeloader.auth.store import AuthStore

    store = await asyncio.to_thread(AuthStore, stack.tmp / "state")
    try:
        entries = await asyncio.to_thread(store.audit, 0.0, 10_000)
    finally:
        store.close()
    return [e.outcome for e in entries if e.action == action]


async def test_every_load_is_audited_even_when_the_client_leaves(stack: Stack) -> None:
    data = pattern(8 * 1024 * 1024)
    stack.publish("m.bin", data)
    await stack.login()
    url = f"{stack.loader_url}/load/m.bin"

    timeout = aiohttp.ClientTimeout(total=60)

    async def read_all_then_reset() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            resp = await http.post(url, json={"folder": stack.bucket})
            await resp.read()
            resp.close()

    async def leave_mid_stream() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            resp = await http.post(url, json={"folder": stack.bucket})
            await resp.content.readexactly(64 * 1024)
            resp.close()  # drops the connection with most of the body unsent

    # Concurrent, as agents do; each client goes away in its own way.
    await asyncio.gather(*(read_all_then_reset() for _ in range(20)))
    await asyncio.gather(*(leave_mid_stream() for _ in range(50)))

    async def all_recorded() -> bool:
        return len(await audit_outcomes(stack, "load")) >= 70

    await wait_for(all_recorded, within=60)
    outcomes = await audit_outcomes(stack, "load")
    assert len(outcomes) == 70
    assert outcomes.count("client disconnected") >= 50
    assert set(outcomes) <= {"ok", "client disconnected"}


# -- malformed requests -----------------------------------------------------------------

# Under the 64 KiB JSON limit, far deeper than any parser's recursion limit.
NESTED = b"[" * 30_000 + b"]" * 30_000


@pytest.mark.parametrize("path", ["/load/m.bin", "/login", "/unlock", "/api/auth/login"])
async def test_deeply_nested_json_is_a_clear_4xx(stack: Stack, path: str) -> None:
    async with stack.http.post(
        f"{stack.loader_url}{path}", data=NESTED, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 422, resp.status
        assert resp.content_type == "application/json"
        assert "detail" in await resp.json()


MULTIPART_CASES = {
    "no boundary": ("multipart/form-data", b"--x\r\n\r\nabc\r\n--x--\r\n"),
    "bad boundary": ("multipart/form-data; boundary=", b"--x\r\n\r\nabc\r\n--x--\r\n"),
    "no closing boundary": (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="data"; filename="a"\r\n\r\nabc',
    ),
    "huge field name": (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="'
        + b"n" * 60_000
        + b'"\r\n\r\nabc\r\n--x--\r\n',
    ),
    "huge part header": (
        "multipart/form-data; boundary=x",
        b"--x\r\nX-Pad: " + b"p" * 200_000 + b"\r\n\r\nabc\r\n--x--\r\n",
    ),
}


@pytest.mark.parametrize("case", sorted(MULTIPART_CASES))
async def test_malformed_multipart_is_a_clear_4xx(stack: Stack, case: str) -> None:
    content_type, body = MULTIPART_CASES[case]
    await stack.login()
    async with stack.http.post(
        f"{stack.loader_url}/upload/x.bin", data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert 400 <= resp.status < 500, (case, resp.status, await resp.text())
        assert resp.content_type == "application/json"


async def test_405_names_the_allowed_methods(stack: Stack) -> None:
    async with stack.http.get(f"{stack.loader_url}/login") as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert resp.content_type == "application/json"


async def test_a_bad_request_line_is_answered_in_json(stack: Stack) -> None:
    host, port = stack.loader_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GARBAGE\x01 / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"application/json" in head.lower()
    assert b'"detail"' in body


async def test_502_details_do_not_expose_upstream_addresses(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack()
    await stack.start_loader()
    await stack.login()
    await stack.api_runner.cleanup()  # the Resource API goes away
    status, body = await stack.load("m.bin")
    assert status == 502
    port = stack.api_url.rsplit(":", 1)[1]
    assert port.encode() not in body
    assert b"127.0.0.1" not in body
    assert b"Error(" not in body


# -- a CDN that ignores Range -----------------------------------------------------------


async def test_a_cdn_that_ignores_range_is_refused_without_buffering(
    stack: Stack, range_ignoring_proxy: Callable[[str], Awaitable[str]]
) -> None:
    from edgeloader.config import CdnOverrides

    data = pattern(4 * 1024 * 1024)
    stack.publish("m.bin", data)
    proxy = await range_ignoring_proxy(stack.s3_endpoint)
    await stack.start_loader(stack.settings(cache_dir=None, cdn=CdnOverrides(host=proxy)))
    await stack.login()
    status, body = await stack.load("m.bin")
    assert status == 502
    assert b"range" in body.lower()


@pytest.fixture
async def range_ignoring_proxy() -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """An HTTP proxy in front of S3 that drops every ``Range`` header."""
    from aiohttp import web

    from tests.integration.conftest import start

    runners: list[web.AppRunner] = []

    async def make(upstream: str) -> str:
        session = aiohttp.ClientSession(auto_decompress=False)

        async def forward(request: web.Request) -> web.StreamResponse:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("range",)}
            body = await request.read()
            async with session.request(
                request.method, upstream + request.path_qs, headers=headers, data=body
            ) as resp:
                out = web.StreamResponse(status=resp.status, headers=resp.headers)
                await out.prepare(request)
                async for chunk in resp.content.iter_chunked(1 << 16):
                    await out.write(chunk)
                await out.write_eof()
                return out

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        app.on_cleanup.append(lambda _: session.close())
        runner, url = await start(app)
        runners.append(runner)
        return url

    yield make
    for runner in runners:
        await runner.cleanup()


# -- connections: caps and timeouts ----------------------------------------------------


@pytest.fixture
async def limited_loader(stack: Stack) -> AsyncIterator[str]:
    """``edgeloader serve`` as its own process at systemd's default of 1024
    descriptors, with 2-second header and body timeouts."""
    port = free_port()
    env = clean_env(
        RESOURCE_API_URL=stack.api_url,
        EDGELOADER_STATE_DIR=str(stack.tmp / "limited-state"),
        EDGELOADER_AUTH="compat",
        EDGELOADER_HEADER_TIMEOUT="2",
        EDGELOADER_BODY_TIMEOUT="2",
    )
    process = await asyncio.create_subprocess_exec(
        *["prlimit", "--nofile=1024:1024", sys.executable, "-m", "edgeloader", "serve"],
        *["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{url}/health")
        yield url
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def closed_by_server(reader: asyncio.StreamReader, within: float = 30.0) -> bool:
    """True when the server closes the connection (EOF) within ``within`` s."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except (TimeoutError, ConnectionError):
        return False
    return True


async def test_idle_sockets_cannot_starve_the_service(limited_loader: str) -> None:
    host, port = limited_loader.removeprefix("http://").split(":")
    sockets = []
    for _ in range(1100):  # more than the service's descriptors
        sockets.append(await asyncio.open_connection(host, int(port)))
    try:
        timeout = aiohttp.ClientTimeout(total=20)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{limited_loader}/health") as resp,
        ):
            assert resp.status == 200
    finally:
        for _, writer in sockets:
            writer.close()


async def test_slow_headers_and_stalled_bodies_are_closed(limited_loader: str) -> None:
    host, port = limited_loader.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()

    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"email": '
    )
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()


async def test_a_slow_reader_of_a_long_answer_is_never_cut(
    stack: Stack, limited_loader: str
) -> None:
    data = pattern(24 * 1024 * 1024)
    stack.publish("m.bin", data)
    await stack.login(url=limited_loader)
    received = bytearray()
    async with aiohttp.ClientSession(read_bufsize=1 << 16) as http:
        url = f"{limited_loader}/load/m.bin"
        async with http.post(url, json={"folder": stack.bucket}) as resp:
            assert resp.status == 200
            received += await resp.content.readexactly(1 << 20)
            await asyncio.sleep(5)  # longer than both timeouts, reading nothing
            received += await resp.content.read()
    assert bytes(received) == data


# -- uploads over an existing resource --------------------------------------------------


def keys_of(stack: Stack, name: str) -> list[str]:
    listing = s3_client(stack.s3_endpoint).list_objects_v2(Bucket=stack.bucket, Prefix=name)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def upload_form(data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("data", data, filename="x", content_type="application/octet-stream")
    return form


async def test_a_failed_overwrite_leaves_the_previous_resource(stack: Stack) -> None:
    old = pattern(200_000)
    stack.publish("m.bin", old)
    # An Operator passes the compat-mode route; the Resource API refuses its post.
    await stack.login(OPERATOR)
    async with stack.http.post(
        f"{stack.loader_url}/upload/m.bin?folder={stack.bucket}", data=upload_form(pattern(300_000))
    ) as resp:
        assert resp.status == 502
    assert await stack.load("m.bin") == (200, old)
    assert keys_of(stack, "m.bin") == ["m.bin.big"]  # no staging object left


async def test_an_overwrite_replaces_the_resource_whole(stack: Stack) -> None:
    stack.publish("m.bin", pattern(200_000))
    await stack.login()
    new = pattern(9 * 1024 * 1024)
    async with stack.http.post(
        f"{stack.loader_url}/upload/m.bin?folder={stack.bucket}", data=upload_form(new)
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert await stack.load("m.bin") == (200, new)
    assert keys_of(stack, "m.bin") == ["m.bin.big"]


async def test_a_v2_small_part_beside_another_big_part_never_loads(stack: Stack) -> None:
    """The window of an overwrite: new small part, old big part. v2 refuses
    it cleanly: no byte of plaintext, never a complete-looking body."""
    from tests.integration.test_integrity import publish_v2

    publish_v2(stack, "a.bin", pattern(500_000))
    new_ct = publish_v2(stack, "b.bin", pattern(500_000))
    cut = min(3072, len(new_ct) * 3 // 10)
    (stack.api_dir / "resources" / stack.bucket / "a.bin.small").write_bytes(new_ct[:cut])
    await stack.login()
    status, length, received, was_cut = await stack.load_until_cut("a.bin")
    assert received == b""
    assert status == 502 or (was_cut and length == 500_000)


async def test_an_upload_finishes_when_the_client_leaves_during_the_small_part_post(
    stack: Stack,
) -> None:
    """The client goes away while the small part is being posted: the upload
    still completes, and the new resource is loadable afterwards."""
    from aiohttp import web

    from tests.integration.conftest import start

    stack.publish("m.bin", pattern(100_000))
    posting = asyncio.Event()
    http = aiohttp.ClientSession()

    async def slow_api(request: web.Request) -> web.StreamResponse:
        """Forwards to the Resource API, holding small-part posts for 2 s."""
        body = await request.read()
        if (
            request.method == "POST"
            and request.path.startswith("/resources/")
            and (not request.path.startswith("/resources/get"))
        ):
            posting.set()
            await asyncio.sleep(2)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with http.request(
            request.method, stack.api_url + request.path_qs, headers=headers, data=body
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", slow_api)
    proxy_runner, proxy_url = await start(app)
    try:
        await stack.start_loader(stack.settings(resource_api_url=proxy_url))
        await stack.login()
        new = pattern(3 * 1024 * 1024)
        url = f"{stack.loader_url}/upload/m.bin?folder={stack.bucket}"

        async def upload_then_leave() -> None:
            async with aiohttp.ClientSession() as client:
                await client.post(url, data=upload_form(new))

        task = asyncio.create_task(upload_then_leave())
        await asyncio.wait_for(posting.wait(), 60)
        task.cancel()  # the client goes away mid-post
        with pytest.raises(asyncio.CancelledError):
            await task

        async def replaced() -> bool:
            status, body = await stack.load("m.bin")
            return status == 200 and body == new

        await wait_for(replaced, within=60)
        assert keys_of(stack, "m.bin") == ["m.bin.big"]
    finally:
        await proxy_runner.cleanup()
        await http.close()


async def test_objects_over_the_single_copy_limit_are_copied_in_parts(stack: Stack) -> None:
    from edgeloader.upstream.cdn import Cdn, CdnConfig
    from tests.integration.conftest import CDN_KEYS

    data = pattern(12 * 1024 * 1024 + 7)
    s3_client(stack.s3_endpoint).put_object(Bucket=stack.bucket, Key="src", Body=data)
    config = CdnConfig(host=stack.s3_endpoint, **CDN_KEYS)
    async with Cdn(config) as cdn:
        await cdn.copy(
            stack.bucket, "src", "dst", len(data), single_copy_max=5 << 20, part_size=5 << 20
        )
    copied = s3_client(stack.s3_endpoint).get_object(Bucket=stack.bucket, Key="dst")
    assert copied["Body"].read() == data


async def test_concurrent_overwrites_of_one_name_never_mix(stack: Stack) -> None:
    """Many uploads of one name at once: the resource ends as exactly one of
    them, whole, and no staging object is left."""
    await stack.login()
    versions = [pattern(300_000 + i) for i in range(20)]
    url = f"{stack.loader_url}/upload/m.bin?folder={stack.bucket}"

    async def upload(data: bytes) -> int:
        async with stack.http.post(url, data=upload_form(data)) as resp:
            return resp.status

    statuses = await asyncio.gather(*(upload(v) for v in versions))
    assert statuses == [200] * len(versions)
    status, body = await stack.load("m.bin")
    assert status == 200
    assert body in versions
    assert keys_of(stack, "m.bin") == ["m.bin.big"]
