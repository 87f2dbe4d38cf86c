"""Client of the central Resource API (docs/protocol.md).

It keeps the device's credentials and upstream token in memory, and on a
401/403 from any authenticated call it logs in again once and retries once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from edgeloader.errors import (
    DeviceNotLoggedIn,
    InvalidCredentials,
    NotFound,
    ResourceApiError,
)

log = logging.getLogger(__name__)

# Claim names: docs/protocol.md, with the long .NET forms some issuers use.
_ROLE_CLAIMS = ("role", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")
_EMAIL_CLAIMS = ("unique_name", "email")
_ID_CLAIMS = ("nameid", "sub")
# Small parts are at most 3072 bytes plus padding; cdn.yaml is tiny too.
MAX_PART_BYTES = 1 << 20
MAX_FRAGMENT_BYTES = 1 << 20
_HMAC_ALGS = ["HS256", "HS384", "HS512"]
_ASYMMETRIC_ALGS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


@dataclass(frozen=True)
class Credentials:
    email: str
    password: str


@dataclass(frozen=True)
class Identity:
    user_id: str
    email: str
    role: str


def _claim(claims: dict[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        value = claims.get(name)
        if isinstance(value, list) and value:
            value = value[0]
        if value is not None:
            return str(value)
    return ""


class ResourceApiClient:
    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 30.0,
        jwt_key: str | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._jwt_key = jwt_key
        self._warned_unverified = False
        self._credentials: Credentials | None = None
        self._token: str | None = None
        self.identity: Identity | None = None

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    @property
    def authenticated(self) -> bool:
        return self._token is not None

    async def login(self, email: str, password: str) -> Identity:
        """Logs in and keeps the credentials for later re-logins."""
        creds = Credentials(email, password)
        token = await self._fetch_token(creds)
        identity = self._identity_from(token)
        self._credentials, self._token, self.identity = creds, token, identity
        log.info("logged in upstream as %s (role %s)", identity.email, identity.role or "none")
        return identity

    async def check_credentials(self, email: str, password: str) -> Identity:
        """Verifies a user upstream without making them the device's session."""
        return self._identity_from(await self._fetch_token(Credentials(email, password)))

    async def _fetch_token(self, creds: Credentials) -> str:
        body = {"email": creds.email, "password": creds.password}
        try:
            async with self._request("POST", "/login", json=body) as resp:
                if resp.status in (401, 403):
                    raise InvalidCredentials("invalid email or password")
                await self._raise_for_status(resp, "login")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _unreachable("login", exc) from exc
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ResourceApiError("Resource API login answered without a token")
        return token

    def _identity_from(self, token: str) -> Identity:
        try:
            if self._jwt_key:
                # A PEM key means an asymmetric issuer; anything else is an HS secret.
                asymmetric = "-----BEGIN" in self._jwt_key
                claims = jwt.decode(
                    token,
                    self._jwt_key,
                    algorithms=_ASYMMETRIC_ALGS if asymmetric else _HMAC_ALGS,
                    options={"require": ["exp"], "verify_aud": False},
                )
            else:
                if not self._warned_unverified:
                    log.warning(
                        "EDGELOADER_UPSTREAM_JWT_KEY is not set: the upstream token's "
                        "signature is not verified, its claims are only read"
                    )
                    self._warned_unverified = True
                claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise ResourceApiError(f"Resource API token rejected: {exc}") from None
        return Identity(
            user_id=_claim(claims, _ID_CLAIMS),
            email=_claim(claims, _EMAIL_CLAIMS),
            role=_claim(claims, _ROLE_CLAIMS),
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._session.request(method, self._base + path, timeout=self._timeout, **kwargs)

    async def _raise_for_status(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status == 404:
            raise NotFound(f"{what}: not found upstream")
        if resp.status >= 400:
            text = (await resp.text(errors="replace"))[:200]
            raise ResourceApiError(f"Resource API {what} failed: HTTP {resp.status} {text}".strip())

    async def _authed(
        self,
        method: str,
        path: str,
        what: str,
        read: Callable[[aiohttp.ClientResponse], Awaitable[Any]],
        request_kwargs: Callable[[], dict[str, Any]] = dict,
    ) -> Any:
        """An authenticated call; on 401/403 logs in again once and retries once.

        ``request_kwargs`` is called per attempt, since a body such as a
        multipart form can be sent only once.
        """
        if self._credentials is None or self._token is None:
            raise DeviceNotLoggedIn()
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._token}"}
            try:
                async with self._request(method, path, headers=headers, **request_kwargs()) as resp:
                    if resp.status in (401, 403) and attempt == 1:
                        log.info("upstream token refused (%s); logging in again", resp.status)
                        self._token = await self._fetch_token(self._credentials)
                        self.identity = self._identity_from(self._token)
                        continue
                    if resp.status in (401, 403):
                        raise ResourceApiError(f"Resource API refused {what}: HTTP {resp.status}")
                    await self._raise_for_status(resp, what)
                    return await read(resp)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unreachable(what, exc) from exc
        raise AssertionError("unreachable")

    async def fetch_part(self, folder: str, file_name: str, hardware: str) -> bytes:
        """``POST /resources/get/{folder}``: a part encrypted under our API key."""
        password = self._credentials.password if self._credentials else ""
        body = {"password": password, "hardware": hardware, "fileName": file_name}
        return await self._authed(  # type: ignore[no-any-return]
            "POST",
            f"/resources/get/{folder}",
            f"fetch of {folder}/{file_name}" if folder else f"fetch of {file_name}",
            lambda resp: _read_limited(resp, MAX_PART_BYTES),
            lambda: {"json": body},
        )

    async def upload_part(self, folder: str, file_name: str, data: bytes) -> None:
        """``POST /resources/{folder}``: multipart with the file field ``data``."""

        def form() -> aiohttp.FormData:
            # Names are sent as they are: the API stores what it receives.
            fd = aiohttp.FormData(quote_fields=False)
            fd.add_field("data", data, filename=file_name, content_type="application/octet-stream")
            return fd

        async def ok(resp: aiohttp.ClientResponse) -> None:
            await resp.read()

        await self._authed("POST", f"/resources/{folder}", "upload", ok, lambda: {"data": form()})

    async def list_resources(self, folder: str, search: str = "") -> list[str]:
        async def names(resp: aiohttp.ClientResponse) -> list[str]:
            data = await resp.json(content_type=None)
            if not isinstance(data, list):
                raise ResourceApiError("Resource API list answer is not a JSON list")
            return [str(x) for x in data]

        return await self._authed(  # type: ignore[no-any-return]
            "GET",
            f"/resources/list/{folder}",
            "list",
            names,
            lambda: {"params": {"search": search}},
        )

    async def key_fragment(self) -> bytes:
        return await self._authed(  # type: ignore[no-any-return]
            "GET",
            "/binary-split/key-fragment",
            "key fragment fetch",
            lambda resp: _read_limited(resp, MAX_FRAGMENT_BYTES),
        )


def _unreachable(what: str, exc: BaseException) -> ResourceApiError:
    """The transport's details (host, port, the exception) go to the log
    only; the caller is told what failed, not where."""
    log.warning("Resource API unreachable during %s: %r", what, exc)
    return ResourceApiError(f"Resource API unreachable during {what}")


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise ResourceApiError(f"Resource API answer larger than {limit} bytes")
    return bytes(data)
