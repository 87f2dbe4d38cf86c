"""``GET /api/doctor`` and ``GET /docs`` against the real stack: the
service's checks as an admin sees them (and a function whose image was
removed from the engine among them), the page of the API and every file
it loads, public and from this service alone."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from tests.support.engines import EngineService, import_busybox_image, remove_image
from tests.support.functions import Api, sh
from tests.support.stack import Stack

#: The service's checks, in the order it answers them (docs/cli.md).
CHECKS = [
    "resource api",
    "engine",
    "state folder",
    "publisher key",
    "aes",
    "swap",
    "mount namespace",
    "run folders",
    "function images",
    "engine tmpdir",
    "model store",
]


async def test_an_admin_gets_the_services_checks_and_other_roles_do_not(
    api: Api, engine: EngineService
) -> None:
    answer = await api.get("/api/doctor")
    checks = {c["check"]: (c["verdict"], c["detail"]) for c in answer["checks"]}
    assert [c["check"] for c in answer["checks"]] == CHECKS
    assert all(c["verdict"] in ("ok", "warn", "fail") and c["detail"] for c in answer["checks"])
    name = {"podman": "podman ", "docker": "Docker Engine "}[engine.kind]
    assert checks["engine"][0] == "ok"
    assert checks["engine"][1].startswith(name), checks["engine"]
    assert checks["engine"][1].endswith(f"answers at {engine.docker_host}")
    assert checks["resource api"][0] == "ok"
    assert checks["state folder"][0] == "ok"
    assert checks["publisher key"][0] == "warn"  # the stack trusts no publisher
    assert checks["run folders"][0] == "ok"
    assert checks["function images"] == ("ok", "no function is deployed")
    assert checks["model store"][0] == "ok"
    assert "in use (EDGELOADER_MODEL_MEMORY_MAX)" in checks["model store"][1]

    status, body, _ = await api.call("GET", "/api/doctor", api.operator)
    assert status == 403, body
    assert body["detail"].startswith("role Operator may not call GET /api/doctor")
    status, body, _ = await api.call("GET", "/api/doctor", None)
    assert status == 401, body


async def test_a_function_whose_image_is_gone_is_listed(api: Api, engine: EngineService) -> None:
    ref = "localhost/edgeloader-fn-doctor-gone:1"
    import_busybox_image(engine, ref)
    await api.deploy("kept", command=sh("true"))
    await api.deploy("gone", image=ref, command=sh("true"))

    checks = {c["check"]: c for c in (await api.get("/api/doctor"))["checks"]}
    assert checks["function images"]["verdict"] == "ok"
    assert checks["function images"]["detail"] == "2 functions, every image in the engine"

    remove_image(engine, ref)  # an engine reset, a prune
    checks = {c["check"]: c for c in (await api.get("/api/doctor"))["checks"]}
    assert checks["function images"] == {
        "check": "function images",
        "verdict": "fail",
        "detail": "image gone from the engine: gone v1: invokes fail until each is "
        "redeployed or unlock runs again",
    }


class Links(HTMLParser):
    """The URLs a page loads, and the bodies of its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []  # (tag, url)
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append((tag, value))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript"}


async def test_docs_is_swagger_ui_served_from_this_service_alone(stack: Stack) -> None:
    page_url = f"{stack.loader_url}/docs"
    async with stack.http.get(page_url) as resp:  # no token: public like the document
        assert resp.status == 200
        assert resp.content_type == "text/html"
        policy = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert not re.search(r"https?://", page), "the page names no other host"

    links = Links()
    links.feed(page)
    assert links.scripts
    assert all(not body.strip() for body in links.scripts), "no inline script"
    served = []
    for tag, url in links.urls:
        if url.startswith("data:"):
            continue
        absolute = urljoin(page_url, url)
        assert urlsplit(absolute).netloc == urlsplit(stack.loader_url).netloc
        async with stack.http.get(absolute) as resp:
            assert resp.status == 200, absolute
            body = await resp.read()
            suffix = "." + absolute.rsplit(".", 1)[-1]
            assert resp.content_type == MEDIA_TYPES[suffix], (absolute, resp.content_type)
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert body
        served.append((tag, urlsplit(absolute).path))
    assert ("script", "/docs/swagger-ui-bundle.js") in served
    assert ("link", "/docs/swagger-ui.css") in served
    assert ("script", "/docs/docs.js") in served

    # The script starts Swagger UI over this service's own document.
    async with stack.http.get(f"{stack.loader_url}/docs/docs.js") as resp:
        script = await resp.text()
    assert "SwaggerUIBundle(" in script
    spec = re.search(r'url: "([^"]+)"', script)
    assert spec is not None
    async with stack.http.get(urljoin(page_url, spec.group(1))) as resp:
        assert resp.status == 200
        document = await resp.json()
    assert "/docs" in document["paths"]
    assert "/api/doctor" in document["paths"]
