"""The OpenAPI document: valid OpenAPI 3.1, complete (every route of the
app, and a route added without ``@documented`` fails here), with the
security the guards enforce, served publicly; and the request models'
answers for malformed input."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from edgeloader.config import Settings
from edgeloader.errors import ValidationFailed
from edgeloader.web import create_app
from edgeloader.web.guards import PUBLIC_PATHS, route_marks
from edgeloader.web.models.auth import AuditQuery, NewKeyBody
from edgeloader.web.models.azaion import CredentialsBody, LoggedIn
from edgeloader.web.openapi import build_document, documented, undocumented
from edgeloader.wire import parse_json

METHODS = {"get", "put", "post", "delete", "patch"}


def make_app(tmp_path: Path, mode: str = "required") -> web.Application:
    settings = Settings.from_env(
        {
            "RESOURCE_API_URL": "http://127.0.0.1:9",
            "EDGELOADER_STATE_DIR": str(tmp_path / mode),
            "EDGELOADER_AUTH": mode,
        }
    )
    return create_app(settings, fingerprint="CPU: openapi test")


@pytest.fixture
def app(tmp_path: Path) -> web.Application:
    return make_app(tmp_path)


@pytest.fixture
def document(app: web.Application) -> dict[str, Any]:
    return build_document(app)


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, resource.canonical)
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD"
    }


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_of_the_app_is_documented(
    app: web.Application, document: dict[str, Any]
) -> None:
    assert undocumented(app) == []
    assert {(method, path) for method, path, _ in operations(document)} == routes_of(app)


def test_a_route_added_without_documentation_is_caught(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    async def hidden(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/api/hidden", hidden)
    assert undocumented(app) == ["GET /api/hidden"]
    assert "/api/hidden" not in build_document(app)["paths"]


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def test_security_and_auth_errors_follow_the_guards(
    app: web.Application, document: dict[str, Any]
) -> None:
    handlers = {
        (route.method, resource.canonical): route.handler
        for resource in app.router.resources()
        for route in resource
    }
    for method, path, op in operations(document):
        marks = route_marks(handlers[(method, path)])
        responses = op["responses"]
        if path in PUBLIC_PATHS and not marks.optional_token:
            assert op["security"] == [], path
            assert "401" not in responses or path.startswith("/api/auth/"), path
        else:
            assert {"bearer": []} in op["security"], path
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"], path
        if marks.roles is not None:
            assert "403" in responses, path
            assert op["x-edgeloader-roles"] == sorted(marks.roles)
        assert op.get("x-edgeloader-compat-public", False) == marks.azaion, path
        if "429" in responses:
            assert responses["429"]["headers"]["Retry-After"]["required"], path
        for status, answer in responses.items():
            assert "X-Request-ID" in answer["headers"], (path, status)
            if int(status) >= 400:
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorAnswer"}, (path, status)


def test_the_routes_a_box_needs_are_there(document: dict[str, Any]) -> None:
    paths = document["paths"]
    expected = {
        ("get", "/health"),
        ("get", "/status"),
        ("post", "/login"),
        ("post", "/load/{filename}"),
        ("post", "/upload/{filename}"),
        ("post", "/unlock"),
        ("get", "/unlock/status"),
        ("get", "/metrics"),
        ("get", "/api/events"),
        ("get", "/openapi.json"),
        ("post", "/api/functions"),
        ("get", "/api/runs/{run_id}/logs"),
        ("delete", "/api/keys/{key_id}"),
        ("get", "/api/audit"),
    }
    assert {(m, p) for m, p in expected if m in paths.get(p, {})} == expected
    load = paths["/load/{filename}"]["post"]["responses"]["200"]["content"]
    assert list(load) == ["application/octet-stream"]
    upload = paths["/upload/{filename}"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"]
    assert "text/event-stream" in paths["/api/events"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert paths["/metrics"]["get"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert paths["/login"]["post"]["security"] == [{}, {"bearer": []}]
    for status in ("413", "422"):
        assert status in paths["/login"]["post"]["responses"]


def test_json_bodies_document_their_413_and_422(document: dict[str, Any]) -> None:
    for _, path, op in operations(document):
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            assert {"413", "422"} <= set(op["responses"]), path


def test_path_parameters_are_all_described(document: dict[str, Any]) -> None:
    for _, path, op in operations(document):
        named = set(re.findall(r"\{(\w+)\}", path))
        described = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert named == described, path


def test_documented_takes_a_bare_model_as_a_json_body() -> None:
    @documented("x", tag="t", body=CredentialsBody, answers={200: LoggedIn})
    async def handler(request: web.Request) -> web.Response:
        raise AssertionError

    operation = handler.__dict__["edgeloader_operation"]
    assert operation.body.media_type == "application/json"
    assert operation.answers[200].model is LoggedIn
    assert operation.answers[200].description.startswith("In ``required`` mode")


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def test_openapi_json_is_public_and_is_the_document(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == build_document(client.app)
    assert (await client.get("/api/keys")).status == 401  # the mode is `required`


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"", "request body must be JSON"),
        (b"not json", "request body must be JSON"),
        (b"[]", "request body must be a JSON object"),
        (b"[" * 1000 + b"]" * 1000, "request body is nested too deeply"),
        (b'{"email": "a@b"}', "field 'password' is required"),
        (b'{"email": 1, "password": "x"}', "field 'email': input should be a valid string"),
        (b'{"email": "", "password": "x"}', "field 'email'"),
        (b'{"email": "' + b"a" * 255 + b'", "password": "x"}', "at most 254 characters"),
    ],
)
def test_a_malformed_body_is_422_naming_the_field(raw: bytes, detail: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_json(raw, CredentialsBody)
    assert caught.value.status == 422
    assert detail in caught.value.detail


def test_bodies_ignore_unknown_fields_but_not_wrong_types() -> None:
    body = parse_json(b'{"email": "a@b", "password": "p", "extra": [1]}', CredentialsBody)
    assert (body.email, body.password) == ("a@b", "p")
    with pytest.raises(ValidationFailed, match="validity"):
        parse_json(b'{"name": "k", "role": "Operator", "validity": "2d"}', NewKeyBody)
    with pytest.raises(ValidationFailed, match="role"):
        parse_json(b'{"name": "k", "role": "Superuser", "validity": "1d"}', NewKeyBody)


def test_query_models_convert_text() -> None:
    assert AuditQuery.model_validate({"since": "12.5", "limit": "7"}) == AuditQuery(
        since=12.5, limit=7
    )
