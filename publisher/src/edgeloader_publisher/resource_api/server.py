"""The reference Resource API (docs/protocol.md) served over aiohttp.

Layout under ``data_dir``::

    users.sqlite3            the user store
    key_fragment             64 random bytes, made on first start (0600)
    cdn.yaml                 optional; served from the empty folder
    manifest.json(.sig)      optional signed release manifest; served from the empty folder
    images.enc.segments      optional, the archive's segment list; served from the empty folder
    resources/<folder>/<fileName>
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import jwt
from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler

from edgeloader.publishing import (
    ARCHIVE_KEY,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    UPLOADERS,
    AtomicFile,
    ConfigError,
    EdgeloaderError,
    Forbidden,
    InvalidCredentials,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    UnsafeName,
    atomic_write,
    crypto,
)
from edgeloader_publisher.resource_api.users import UserStore

__all__ = [
    "CDN_FILE",
    "CONFIG_KEY",
    "KEY_FRAGMENT_FILE",
    "KEY_FRAGMENT_KEY",
    "RESOURCES_DIR",
    "USERS_FILE",
    "USERS_KEY",
    "ResourceApiConfig",
    "check_name",
    "create_resource_api_app",
    "read_or_create_secret",
]

log = logging.getLogger("edgeloader_publisher.resource_api")

USERS_FILE: Final = "users.sqlite3"
KEY_FRAGMENT_FILE: Final = "key_fragment"
KEY_FRAGMENT_SIZE: Final = 64
CDN_FILE: Final = "cdn.yaml"
#: What the empty folder serves: the CDN settings and the signed release manifest.
ROOT_FILES: Final = frozenset(
    {CDN_FILE, MANIFEST_FILE, SIGNATURE_FILE, crypto.segments_name(ARCHIVE_KEY)}
)
RESOURCES_DIR: Final = "resources"

_JWT_ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["nameid", "unique_name", "role", "exp", "iat"]
_CHUNK = 256 * 1024
_MAX_JSON_BYTES = 64 * 1024
_MAX_NAME_BYTES = 255
_BAD_CREDENTIALS = "invalid email or password"
_BAD_TOKEN = "invalid or expired token"  # noqa: S105 (a message)


@dataclass(frozen=True, slots=True)
class ResourceApiConfig:
    data_dir: Path
    jwt_secret: str = field(repr=False)
    token_lifetime: float = 3600.0
    max_upload_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        # RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
        if len(self.jwt_secret.encode()) < 32:
            raise ConfigError("the JWT secret must be at least 32 bytes long")
        if self.token_lifetime <= 0:
            raise ConfigError("token_lifetime must be positive")
        if self.max_upload_bytes <= 0:
            raise ConfigError("max_upload_bytes must be positive")


@dataclass(frozen=True, slots=True)
class _Claims:
    user_id: str
    email: str
    role: str


CONFIG_KEY: Final = web.AppKey("config", ResourceApiConfig)
USERS_KEY: Final = web.AppKey("users", UserStore)
KEY_FRAGMENT_KEY: Final = web.AppKey("key_fragment", bytes)


def check_name(name: str) -> str:
    """Returns ``name`` if it is safe as one path component, else raises UnsafeName.

    Names starting with a dot are refused too: the upload temp files start
    with one, and listings skip them.
    """
    if (
        not name
        or name.startswith(".")
        or len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES
        or any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    ):
        raise UnsafeName(f"unsafe name {name[:64]!r}")
    return name


def read_or_create_secret(path: Path, generate: Callable[[], bytes]) -> bytes:
    """Reads a secret file, creating it (mode 0600) with ``generate()`` if missing.

    The file appears complete or not at all, and a concurrent creator wins
    cleanly (an exclusive commit never replaces a file that appeared).
    """
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            atomic_write(path, generate(), exclusive=True)
    data = path.read_bytes()
    if not data:
        raise ConfigError(f"{path} is empty")
    return data


def create_resource_api_app(config: ResourceApiConfig) -> web.Application:
    app = web.Application(middlewares=[_access_log, _json_errors], client_max_size=_MAX_JSON_BYTES)
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(_storage)
    app.router.add_post("/login", _login)
    app.router.add_post("/resources/get/", _get_resource)
    app.router.add_post("/resources/get/{folder}", _get_resource)
    app.router.add_post("/resources/{folder}", _upload)
    app.router.add_get("/resources/list/{folder}", _list)
    app.router.add_get("/binary-split/key-fragment", _key_fragment)
    return app


def _open_storage(data_dir: Path) -> tuple[UserStore, bytes]:
    (data_dir / RESOURCES_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
    fragment = read_or_create_secret(
        data_dir / KEY_FRAGMENT_FILE, lambda: os.urandom(KEY_FRAGMENT_SIZE)
    )
    return UserStore(data_dir / USERS_FILE), fragment


async def _storage(app: web.Application) -> AsyncIterator[None]:
    store, app[KEY_FRAGMENT_KEY] = await asyncio.to_thread(_open_storage, app[CONFIG_KEY].data_dir)
    app[USERS_KEY] = store
    try:
        yield
    finally:
        store.close()


# -- middlewares ------------------------------------------------------------------------


@web.middleware
async def _access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        ms = (time.perf_counter() - start) * 1000
        log.info("%s %s %d %.1fms", request.method, request.path, status, ms)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EdgeloaderError as exc:
        return _error(exc.status, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return _error(exc.status, exc.reason, allow)
    except ConnectionResetError:
        raise  # the client is gone: nobody to answer
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal server error")


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response({"detail": detail}, status=status, headers=headers)


# -- request helpers --------------------------------------------------------------------


def _authenticate(request: web.Request) -> _Claims:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("missing bearer token")
    try:
        claims = jwt.decode(
            token,
            request.app[CONFIG_KEY].jwt_secret,
            algorithms=[_JWT_ALGORITHM],
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.InvalidTokenError:
        raise NotAuthenticated(_BAD_TOKEN) from None
    user_id, email, role = (claims["nameid"], claims["unique_name"], claims["role"])
    if not (isinstance(user_id, str) and isinstance(email, str) and isinstance(role, str)):
        raise NotAuthenticated(_BAD_TOKEN)
    return _Claims(user_id=user_id, email=email, role=role)


async def _json_strings(request: web.Request, *names: str) -> list[str]:
    """The named string fields of a JSON object body; InvalidRequest otherwise."""
    try:
        body = await request.json()
    except (ValueError, LookupError):
        raise InvalidRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    values = []
    for name in names:
        value = body.get(name)
        if not isinstance(value, str):
            raise InvalidRequest(f"field {name!r} must be a string")
        values.append(value)
    return values


def _resource_path(data_dir: Path, folder: str, file_name: str) -> Path:
    check_name(file_name)
    if not folder:
        if file_name not in ROOT_FILES:
            raise NotFound("resource not found")
        return data_dir / file_name
    return data_dir / RESOURCES_DIR / check_name(folder) / file_name


# -- handlers ---------------------------------------------------------------------------


async def _login(request: web.Request) -> web.Response:
    email, password = await _json_strings(request, "email", "password")
    user = await asyncio.to_thread(request.app[USERS_KEY].verify, email, password)
    if user is None:
        log.info("login failed for %r", email[:100])
        raise InvalidCredentials(_BAD_CREDENTIALS)
    config = request.app[CONFIG_KEY]
    now = int(time.time())
    claims = {
        "nameid": str(user.id),
        "unique_name": user.email,
        "role": user.role,
        "iat": now,
        "exp": now + max(1, round(config.token_lifetime)),
    }
    token = jwt.encode(claims, config.jwt_secret, algorithm=_JWT_ALGORITHM)
    log.info("login ok for user %d (%s)", user.id, user.role)
    return web.json_response({"token": token})


async def _get_resource(request: web.Request) -> web.StreamResponse:
    claims = _authenticate(request)
    password, hardware, file_name = await _json_strings(request, "password", "hardware", "fileName")
    path = _resource_path(
        request.app[CONFIG_KEY].data_dir, request.match_info.get("folder", ""), file_name
    )
    # The body's password must be the user's own: it keys the per-user re-encryption.
    user = await asyncio.to_thread(request.app[USERS_KEY].verify, claims.email, password)
    if user is None or str(user.id) != claims.user_id:
        raise InvalidCredentials(_BAD_CREDENTIALS)
    key = crypto.api_key(claims.email, password, hardware)
    try:
        source = await asyncio.to_thread(path.open, "rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise NotFound("resource not found") from None
    with source:
        return await _send_encrypted(request, source, key)


async def _send_encrypted(request: web.Request, source: BinaryIO, key: bytes) -> web.StreamResponse:
    # Stored files are only ever replaced by rename, so the size of the open
    # file cannot change under us.
    size = os.fstat(source.fileno()).st_size
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = crypto.v1_length(size)
    await response.prepare(request)

    async def plaintext() -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(source.read, _CHUNK):
            yield chunk

    async for piece in crypto.encrypt_chunks(key, plaintext()):
        await response.write(piece)
    await response.write_eof()
    return response


async def _upload(request: web.Request) -> web.Response:
    claims = _authenticate(request)
    if claims.role not in UPLOADERS:
        raise Forbidden(f"role {claims.role!r} may not upload resources")
    folder = check_name(request.match_info["folder"])
    cap = request.app[CONFIG_KEY].max_upload_bytes
    if request.content_length is not None and request.content_length > cap:
        raise PayloadTooLarge(f"the upload is larger than {cap} bytes")
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("expected multipart/form-data")
    try:
        part = await _data_part(request)
        name = check_name(part.filename or "")
        directory = request.app[CONFIG_KEY].data_dir / RESOURCES_DIR / folder
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        await _store_part(part, directory, name, cap)
    except ValueError:
        raise InvalidRequest("malformed multipart body") from None
    log.info("user %s stored %s/%s", claims.user_id, folder, name)
    return web.json_response({"status": "ok"})


async def _data_part(request: web.Request) -> BodyPartReader:
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == "data" and part.filename:
            return part
    raise InvalidRequest("the multipart file field 'data' is missing")


async def _store_part(part: BodyPartReader, directory: Path, name: str, cap: int) -> None:
    """Streams the part into ``directory/name``, which appears only when complete."""
    # Files are served to every user (re-encrypted), so readable like any upload.
    with AtomicFile(directory / name, 0o644) as out:
        while chunk := await part.read_chunk(_CHUNK):
            if out.size + len(chunk) > cap:
                raise PayloadTooLarge(f"the upload is larger than {cap} bytes")
            await asyncio.to_thread(out.write, chunk)
        await asyncio.to_thread(out.commit)


async def _list(request: web.Request) -> web.Response:
    _authenticate(request)
    folder = check_name(request.match_info["folder"])
    search = request.query.get("search", "")
    directory = request.app[CONFIG_KEY].data_dir / RESOURCES_DIR / folder
    return web.json_response(await asyncio.to_thread(_list_names, directory, search))


def _list_names(directory: Path, search: str) -> list[str]:
    needle = search.casefold()
    try:
        with os.scandir(directory) as entries:
            return sorted(
                e.name
                for e in entries
                if not e.name.startswith(".") and e.is_file() and needle in e.name.casefold()
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


async def _key_fragment(request: web.Request) -> web.Response:
    _authenticate(request)
    return web.Response(body=request.app[KEY_FRAGMENT_KEY], content_type="application/octet-stream")
