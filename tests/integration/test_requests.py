"""Malformed requests: every route that takes a body, found in the OpenAPI
document (not a list written here), answers a malformed, truncated or
mistyped body with a 4xx and the JSON error shape, never a 500; deep JSON,
broken multipart framing, wrong methods and bad request lines likewise."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from edgeloader.web.openapi import build_document
from tests.support.stack import ADMIN, Stack

# A value for each path parameter the routes have.
PATH_VALUES = {"filename": "m.bin", "name": "fn1", "key_id": "0123456789abcdef"}
BOUNDARY = "x-boundary"

JSON_CASES = {
    "malformed": b"{not json",
    "truncated": b'{"email": "a@example.org", "passw',
    "an array": b"[1, 2, 3]",
    "wrong field types": b'{"email": 1, "password": [], "name": {}, "apiKey": 2, '
    b'"refreshToken": 3, "folder": 4, "image": 5, "role": 6}',
}
MULTIPART_CASES = {
    "no boundary": ("multipart/form-data", b"--x\r\n\r\nabc\r\n--x--\r\n"),
    "truncated": (
        f"multipart/form-data; boundary={BOUNDARY}",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="data"; filename="a"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\nabc".encode(),
    ),
    "JSON instead": ("application/json", b'{"data": "abc", "context": "abc"}'),
    "a field that is not text": (
        f"multipart/form-data; boundary={BOUNDARY}",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="folder"\r\n\r\n'.encode()
        + b"\xff\xfe"
        + f"\r\n--{BOUNDARY}--\r\n".encode(),
    ),
}


def routes_with_bodies(stack: Stack) -> list[tuple[str, str, str]]:
    """(method, path, media type) of every documented route with a body."""
    app = stack.runners[-1].app
    found = []
    for path, operations in build_document(app)["paths"].items():
        for method, operation in operations.items():
            for media_type in operation.get("requestBody", {}).get("content", {}):
                found.append((method.upper(), path, media_type))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


async def test_every_body_route_refuses_bad_bodies_in_json(stack: Stack) -> None:
    await stack.start_loader(stack.settings(auth_mode="required"))
    creds = {"email": ADMIN[0], "password": ADMIN[1]}
    async with stack.http.post(f"{stack.loader_url}/login", json=creds) as resp:
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["accessToken"]
    routes = routes_with_bodies(stack)
    media = {media_type for _, _, media_type in routes}
    assert media == {"application/json", "multipart/form-data"}, media
    assert len(routes) >= 12, routes  # the document lists them all
    answers: list[tuple[str, str, int]] = []
    for method, path, media_type in routes:
        cases: dict[str, tuple[str, bytes]]
        if media_type == "multipart/form-data":
            cases = MULTIPART_CASES
        else:
            cases = {case: ("application/json", body) for case, body in JSON_CASES.items()}
            cases["multipart instead"] = MULTIPART_CASES["truncated"]
            cases["JSON sent as text"] = ("text/plain", b'{"folder": "f", "email": "a@b.c"}')
        for case, (content_type, body) in cases.items():
            headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
            url = f"{stack.loader_url}{concrete(path)}"
            async with stack.http.request(method, url, data=body, headers=headers) as resp:
                payload: Any = await resp.json(content_type=None)
                where = (method, path, case, resp.status, payload)
                assert 400 <= resp.status < 500, where
                assert resp.content_type == "application/json", where
                assert isinstance(payload.get("detail"), str), where
                answers.append((f"{method} {path}", case, resp.status))
    # Text is what a page of another site can send without asking.
    as_text = [status for _, case, status in answers if case == "JSON sent as text"]
    assert as_text, answers
    assert set(as_text) == {415}, answers
    # Invoke takes any JSON: an array or wrong field types are a body it
    # runs with (here: a function that does not exist, 404).
    assert ("POST /api/functions/{name}/invoke", "an array", 404) in answers


@pytest.mark.parametrize("case", sorted(MULTIPART_CASES))
async def test_a_build_body_that_is_not_a_form_is_4xx(stack: Stack, case: str) -> None:
    """The build route used to answer a malformed form with a 500."""
    await stack.start_loader(stack.settings(auth_mode="required"))
    async with stack.http.post(
        f"{stack.loader_url}/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]}
    ) as resp:
        token = (await resp.json())["accessToken"]
    content_type, body = MULTIPART_CASES[case]
    async with stack.http.post(
        f"{stack.loader_url}/api/functions/fn1/build",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    ) as resp:
        assert 400 <= resp.status < 500, (case, resp.status, await resp.text())
        assert "detail" in await resp.json()


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


FRAMING_CASES = {
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


@pytest.mark.parametrize("case", sorted(FRAMING_CASES))
async def test_malformed_multipart_is_a_clear_4xx(stack: Stack, case: str) -> None:
    content_type, body = FRAMING_CASES[case]
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
