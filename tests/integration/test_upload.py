"""Upload through the loader, then load it back."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from edgeloader.config import CdnOverrides
from edgeloader.errors import ResourceApiError
from edgeloader_publisher.resource import PublishTarget, publish_file
from tests.integration.conftest import ADMIN, OPERATOR, Stack, dead_url, pattern, s3_client
from tests.support import reference


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
