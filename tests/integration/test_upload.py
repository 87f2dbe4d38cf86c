"""Upload through the loader, then load it back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from edgeloader.config import CdnOverrides
from edgeloader.errors import ResourceApiError
from edgeloader.web.state import SERVICES
from edgeloader_publisher.resource import PublishTarget, publish_file
from tests.support import reference
from tests.support.harness.net import dead_url, wait_for
from tests.support.harness.s3 import s3_client
from tests.support.stack import ADMIN, OPERATOR, Stack, pattern


def form(data: bytes | None, folder: str | None, folder_last: bool = False) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    if folder is not None and not folder_last:
        fd.add_field("folder", folder)
    if data is not None:
        fd.add_field("data", data, filename="x", content_type="application/octet-stream")
    if folder is not None and folder_last:
        fd.add_field("folder", folder)
    return fd


async def upload(stack: Stack, name: str, fd: aiohttp.FormData) -> tuple[int, dict[str, object]]:
    async with stack.http.post(f"{stack.loader_url}/upload/{name}", data=fd) as resp:
        return resp.status, await resp.json()


def stored_small(stack: Stack, name: str) -> bytes | None:
    path = stack.api_dir / "resources" / stack.bucket / f"{name}.small"
    return path.read_bytes() if path.exists() else None


def big_exists(stack: Stack, name: str) -> bool:
    listing = s3_client(stack.s3_endpoint).list_objects_v2(Bucket=stack.bucket)
    return any(obj["Key"] == f"{name}.big" for obj in listing.get("Contents", []))


@pytest.mark.parametrize("size", [0, 100, 10_239, 20 * 1024, 12 * 1024 * 1024 + 3])
async def test_upload_then_load_round_trip(stack: Stack, size: int) -> None:
    data = pattern(size)
    await stack.login()
    status, body = await upload(stack, "up.bin", form(data, stack.bucket))
    assert status == 200, body
    assert body["size"] == size
    assert await stack.load("up.bin") == (200, data)


async def test_uploaded_parts_follow_the_documented_split(stack: Stack) -> None:
    """Reassembled with the reference implementation, not our core."""
    data = pattern(50_000)
    await stack.login()
    assert (await upload(stack, "split.bin", form(data, stack.bucket)))[0] == 200
    small = stored_small(stack, "split.bin")
    assert small is not None
    big = s3_client(stack.s3_endpoint).get_object(Bucket=stack.bucket, Key="split.bin.big")
    ct = small + big["Body"].read()
    assert len(small) == min(3072, int(0.3 * len(ct)))
    assert reference.decrypt_v1(reference.resource_key(), ct) == data


async def test_upload_without_a_file_is_422(stack: Stack) -> None:
    await stack.login()
    status, body = await upload(stack, "none.bin", form(None, stack.bucket))
    assert status == 422
    assert "data" in str(body["detail"])


async def test_upload_that_is_not_multipart_is_422(stack: Stack) -> None:
    await stack.login()
    async with stack.http.post(f"{stack.loader_url}/upload/x.bin", json={}) as resp:
        assert resp.status == 422


async def test_folder_after_the_file_that_differs_is_refused_and_rolled_back(
    stack: Stack,
) -> None:
    await stack.login()
    s3_client(stack.s3_endpoint).create_bucket(Bucket="models")
    status, body = await upload(stack, "late.bin", form(b"abc", stack.bucket, folder_last=True))
    assert status == 422
    assert "before the file" in str(body["detail"])
    listing = s3_client(stack.s3_endpoint).list_objects_v2(Bucket="models")
    assert not [o for o in listing.get("Contents", []) if o["Key"] == "late.bin.big"]


async def test_oversized_upload_is_413_and_leaves_nothing(stack: Stack) -> None:
    await stack.start_loader(stack.settings(max_upload_bytes=1024 * 1024))
    await stack.login()
    status, _ = await upload(stack, "huge.bin", form(pattern(3 * 1024 * 1024), stack.bucket))
    assert status == 413
    assert stored_small(stack, "huge.bin") is None
    assert not big_exists(stack, "huge.bin")


async def test_cdn_down_posts_no_small_part(stack: Stack) -> None:
    await stack.start_loader(stack.settings().with_overrides(cdn=CdnOverrides(host=dead_url())))
    await stack.login()
    status, body = await upload(stack, "x.bin", form(b"data", stack.bucket))
    assert status == 502
    assert "CDN unreachable" in str(body["detail"])
    assert stored_small(stack, "x.bin") is None


async def test_unsafe_upload_name_is_400(stack: Stack) -> None:
    await stack.login()
    status, _ = await upload(stack, ".hidden", form(b"data", stack.bucket))
    assert status == 400
    status, _ = await upload(stack, "ok.bin", form(b"data", "../etc"))
    assert status == 400


async def test_upload_before_login_is_401(stack: Stack) -> None:
    status, _ = await upload(stack, "x.bin", form(b"data", stack.bucket))
    assert status == 401


async def test_small_part_refused_removes_the_big_part_on_the_route(stack: Stack) -> None:
    # An Operator passes the loader's compat-mode route, but the Resource API
    # refuses its small-part post: the staged big part must go again.
    await stack.login(OPERATOR)
    status, body = await upload(stack, "refused.bin", form(b"data" * 1000, stack.bucket))
    assert status == 502
    assert "upload" in str(body["detail"])
    assert stored_small(stack, "refused.bin") is None
    assert not big_exists(stack, "refused.bin")


async def test_publisher_cli_path_cleans_up_too(stack: Stack, tmp_path: Path) -> None:
    """The publishing tool goes through the same upload service, so the
    same rule holds: nothing is left on the CDN when the small part fails."""
    source = tmp_path / "model.bin"
    source.write_bytes(pattern(100_000))
    target = PublishTarget(stack.api_url, *OPERATOR)
    with pytest.raises(ResourceApiError):
        await publish_file(target, source, stack.bucket, "cli.bin")
    assert stored_small(stack, "cli.bin") is None
    assert not big_exists(stack, "cli.bin")

    done = await publish_file(PublishTarget(stack.api_url, *ADMIN), source, stack.bucket, "ok.bin")
    assert done.plaintext_bytes == 100_000
    await stack.login()
    assert await stack.load("ok.bin") == (200, source.read_bytes())


async def test_upload_to_a_folder_without_a_bucket_names_the_upload(stack: Stack) -> None:
    await stack.login()
    status, body = await upload(stack, "x.bin", form(b"data", "no-such-bucket-here"))
    assert status == 404
    assert "upload of no-such-bucket-here" in str(body["detail"])


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
    from tests.support.releases import publish_v2

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

    from tests.support.harness.net import serve

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
    proxy_runner, proxy_url = await serve(app)
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

        # The audit says how it ended, not only that the client left.
        auth = stack.runners[-1].app[SERVICES].auth

        async def audited() -> bool:
            entries = await auth.store_audit(0, 100)
            return any(e.action == "upload" for e in entries)

        await wait_for(audited, within=30)
        uploads = [e for e in await auth.store_audit(0, 100) if e.action == "upload"]
        assert [e.outcome for e in uploads] == ["ok; finished after the client disconnected"]
    finally:
        await proxy_runner.cleanup()
        await http.close()


async def test_objects_over_the_single_copy_limit_are_copied_in_parts(stack: Stack) -> None:
    from edgeloader.upstream.cdn import Cdn, CdnConfig
    from tests.support.stack import CDN_KEYS

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
