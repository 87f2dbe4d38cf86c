"""Functions seen by an agent: the loader's API in JSON calls, and what the
function tests build (an image, a context, a form)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.support.engines import EngineService
from tests.support.harness.net import wait_for

JSON = dict[str, Any]
IMAGE = "localhost/edgeloader-fn-base:1"
BASE_IMAGE = "localhost/edgeloader-fn-busybox:latest"


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


@dataclass
class Api:
    """The loader seen by an agent: JSON calls with a bearer token."""

    http: aiohttp.ClientSession
    url: str
    admin: str = ""
    operator: str = ""

    async def call(
        self, method: str, path: str, token: str | None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers |= kwargs.pop("headers", {})
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as resp:
            text = await resp.text()
            body = json.loads(text) if "json" in resp.headers.get("Content-Type", "") else text
            return resp.status, body, resp

    async def login(self, creds: tuple[str, str]) -> str:
        status, body, _ = await self.call(
            "POST", "/api/auth/login", None, json={"email": creds[0], "password": creds[1]}
        )
        assert status == 200, body
        return str(body["accessToken"])

    async def deploy(self, name: str, expect: int = 201, **fields: Any) -> JSON:
        body = {"name": name, "image": IMAGE, **fields}
        status, answer, _ = await self.call("POST", "/api/functions", self.admin, json=body)
        assert status == expect, answer
        return answer  # type: ignore[no-any-return]

    async def invoke(self, name: str, payload: Any = None, token: str | None = None) -> JSON:
        status, answer, _ = await self.call(
            "POST", f"/api/functions/{name}/invoke", token or self.admin, json=payload or {}
        )
        assert status == 200, answer
        return answer  # type: ignore[no-any-return]

    async def get(self, path: str, token: str | None = None) -> Any:
        status, answer, _ = await self.call("GET", path, token or self.admin)
        assert status == 200, answer
        return answer

    async def run_ended(self, run_id: str, within: float = 120) -> JSON:
        ended: JSON = {}

        async def done() -> bool:
            nonlocal ended
            ended = await self.get(f"/api/runs/{run_id}")
            return ended["status"] not in ("queued", "running")

        await wait_for(done, within)
        return ended


def containers_of(engine: EngineService, run_id: str) -> list[str]:
    filters = quote(json.dumps({"label": [f"edgeloader.run={run_id}"]}))
    status, body = engine.request("GET", f"/v1.41/containers/json?all=true&filters={filters}")
    assert status == 200, body
    return [str(c["Id"]) for c in json.loads(body)]


def context_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_form(context: bytes, spec: JSON | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if spec is not None:
        form.add_field("spec", json.dumps(spec), content_type="application/json")
    form.add_field("context", context, filename="context.tar", content_type="application/x-tar")
    return form
