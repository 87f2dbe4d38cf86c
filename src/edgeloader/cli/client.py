"""The HTTP session of the client commands: the service's REST API with the
stored token pair, refreshed when it has expired or a 401 comes back.

- A request carries ``Authorization: Bearer`` when a pair is stored for the
  server (none in ``compat`` mode is fine: the Azaion routes need none).
- An access token within 30 s of its expiry is refreshed before use
  (``POST /api/auth/refresh``, which rotates the refresh token); a 401 is
  refreshed once and the request is sent again. A 401 that says the
  *device* is not logged in upstream is not a token problem and is not
  refreshed.
- Refreshing happens under the credentials file's lock, after re-reading
  it: when another command refreshed meanwhile, its pair is used (a second
  use of the old refresh token would revoke the whole session).
- A refresh token that is refused ends the session: its entry is removed
  and the error says to log in again.
- Errors become :mod:`edgeloader.errors` leaves with one-line messages, so
  ``run_command`` prints them without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import aiohttp

from edgeloader.cli.credentials import CredentialStore, SavedTokens, normalize_url
from edgeloader.cli.output import UsageError
from edgeloader.errors import EdgeloaderError, NotAuthenticated

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "Client",
    "ServiceUnreachable",
    "SessionEnded",
    "os_reason",
]

DEFAULT_URL = "http://127.0.0.1:8080"
#: How the service says that the *device* (not the caller) is not logged in upstream.
DEVICE_NOT_LOGGED_IN = "not logged in:"
_CONNECT_TIMEOUT = 10.0
#: What to do when nothing answers at the URL (``$EDGELOADER_URL`` is read
#: by commands.common.server_url).
START_HINT = (
    "start it with `edgeloader serve` (`make run` in a checkout), "
    "or point --url or $EDGELOADER_URL at it"
)

#: Builds a request body anew for each attempt (a stream cannot be sent twice).
BodyFactory = Callable[[], Any]


class ServiceUnreachable(EdgeloaderError):
    """The service cannot be reached."""


class SessionEnded(NotAuthenticated):
    """Not logged in, or the session ended."""


class ApiError(EdgeloaderError):
    """The service answered with an error: its ``detail`` and status."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.answer_detail = detail
        super().__init__(f"{detail} (HTTP {status})")


class ApiUsageError(UsageError):
    """The service refused the request as given (400, 422): bad usage."""

    def __init__(self, status: int, detail: str) -> None:
        self.answer_detail = detail
        super().__init__(f"{detail} (HTTP {status})")


async def error_detail(resp: aiohttp.ClientResponse) -> str:
    """The ``detail`` of an error answer, or its reason."""
    with contextlib.suppress(aiohttp.ClientError, ValueError, UnicodeDecodeError):
        body = json.loads(await resp.read())
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            return str(body["detail"])
    return resp.reason or f"HTTP {resp.status}"


async def raise_for_answer(resp: aiohttp.ClientResponse) -> None:
    """Raises the error that a non-2xx answer means."""
    detail = await error_detail(resp)
    if resp.status in (400, 422):
        raise ApiUsageError(resp.status, detail)
    raise ApiError(resp.status, detail)


class Client:
    """One command's session with the service at ``url``."""

    def __init__(self, url: str, store: CredentialStore | None = None) -> None:
        self.url = normalize_url(url)
        self.store = store or CredentialStore()
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        # No total or read timeout: loads, uploads, invokes and event streams
        # take as long as they take; Ctrl-C ends them.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=_CONNECT_TIMEOUT, sock_connect=_CONNECT_TIMEOUT
        )
        self._http = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("Client used outside `async with`")
        return self._http

    # -- tokens --------------------------------------------------------------

    def pair(self) -> SavedTokens | None:
        return self.store.get(self.url)

    async def save_pair(self, pair: SavedTokens) -> None:
        def save() -> None:
            with self.store.locked():
                self.store.put(self.url, pair)

        await asyncio.to_thread(save)

    async def forget_pair(self) -> bool:
        def forget() -> bool:
            with self.store.locked():
                return self.store.remove(self.url)

        return await asyncio.to_thread(forget)

    async def refresh(self, stale: SavedTokens) -> SavedTokens:
        """A fresh pair in place of ``stale``: another process's, if it already
        refreshed, else one from ``POST /api/auth/refresh``."""
        loop = asyncio.get_running_loop()
        lock = self.store.locked()
        await loop.run_in_executor(None, lock.__enter__)
        try:
            current = self.store.get(self.url)
            if current is None:
                raise SessionEnded(f"not logged in to {self.url}: run `edgeloader login`")
            if current.refresh_token != stale.refresh_token:
                return current
            async with self._send(
                "POST",
                "/api/auth/refresh",
                json={"refreshToken": current.refresh_token},
                token=None,
            ) as resp:
                if resp.status == 200:
                    try:
                        fresh = SavedTokens.from_answer(await resp.json(), user=current.user)
                    except (ValueError, aiohttp.ContentTypeError) as exc:
                        raise ApiError(resp.status, f"bad refresh answer: {exc}") from None
                    self.store.put(self.url, fresh)
                    return fresh
                detail = await error_detail(resp)
                if resp.status in (401, 403):
                    self.store.remove(self.url)
                    raise SessionEnded(
                        f"the session at {self.url} has ended ({detail}): "
                        "run `edgeloader login` again"
                    )
                raise ApiError(resp.status, f"token refresh failed: {detail}")
        finally:
            lock.__exit__(None, None, None)

    # -- requests ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.http.request(
                method,
                self.url + path,
                json=json,
                params=params,
                data=data,
                headers=all_headers,
            ) as resp:
                yield resp
        except aiohttp.ClientConnectorError as exc:
            raise ServiceUnreachable(
                f"cannot reach the service at {self.url}: {os_reason(exc)}; {START_HINT}"
            ) from None
        except aiohttp.ServerDisconnectedError:
            raise ServiceUnreachable(f"the service at {self.url} closed the connection") from None
        except (aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
            raise ServiceUnreachable(
                f"the connection to {self.url} failed: {os_reason(exc)}"
            ) from None
        except TimeoutError:
            raise ServiceUnreachable(f"the service at {self.url} did not answer in time") from None

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        body: BodyFactory | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Collection[int] | None = (200,),
        auth: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An answer of the service to ``method path``, with the token handled.

        ``expect``: the statuses that are success; any other raises
        :class:`ApiError` (or a usage error for 400/422). ``None`` hands
        every answer to the caller. ``body`` builds the request body for
        each attempt.
        """
        pair = self.pair() if auth else None
        if pair is not None and pair.expired():
            pair = await self.refresh(pair)
        for attempt in (1, 2):
            async with self._send(
                method,
                path,
                token=pair.access_token if pair else None,
                json=json,
                params=params,
                data=body() if body is not None else None,
                headers=headers,
            ) as resp:
                if resp.status == 401 and auth:
                    detail = await error_detail(resp)
                    if detail.startswith(DEVICE_NOT_LOGGED_IN):
                        raise ApiError(
                            401,
                            "the device is not logged in upstream: "
                            "run `edgeloader login --device` as its user",
                        )
                    if pair is None:
                        raise SessionEnded(
                            f"not logged in to {self.url}: run `edgeloader login` ({detail})"
                        )
                    if attempt == 1:
                        pair = await self.refresh(pair)
                        continue
                    raise SessionEnded(
                        f"the service refused the session ({detail}): run `edgeloader login` again"
                    )
                if expect is not None and resp.status not in expect:
                    await raise_for_answer(resp)
                yield resp
                return
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        body: BodyFactory | None = None,
        expect: Collection[int] = (200,),
        auth: bool = True,
    ) -> Any:
        """A JSON call: the decoded answer."""
        async with self.request(
            method, path, json=json, params=params, body=body, expect=expect, auth=auth
        ) as resp:
            return await read_json(resp)


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return json.loads(await resp.read())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(resp.status, "the answer is not JSON") from None


def os_reason(exc: BaseException) -> str:
    """The OS's words for a connection failure ("Connection refused")."""
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, OSError):
        if os_error.errno:
            return os.strerror(os_error.errno)
        if os_error.strerror:
            return os_error.strerror
    return str(exc) or type(exc).__name__
