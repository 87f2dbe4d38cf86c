"""What every service needs of the device's upstream session: the Resource
API client, the device fingerprint, the per-device API key and the CDN.

Who may change the user the device is logged in as lives here too
(``DeviceSession.login``, ``sign_in``; docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from edgeloader import crypto
from edgeloader.config import CdnOverrides, Settings
from edgeloader.errors import DeviceNotLoggedIn, Forbidden
from edgeloader.roles import ADMINS
from edgeloader.upstream.cdn import Cdn, CdnConfig
from edgeloader.upstream.resource_api import Identity, ResourceApiClient

log = logging.getLogger(__name__)

CDN_SETTINGS_FILE = "cdn.yaml"
SWITCH_DENIED = (
    "changing the user the device is logged in as needs Admin or ApiAdmin "
    "(a bearer token of either, or that user's own credentials); "
    "POST /api/auth/login gives a token without changing it"
)


async def fetch_cdn_config(
    api: ResourceApiClient, key: bytes, hardware: str, overrides: CdnOverrides
) -> CdnConfig:
    """The CDN settings: ``cdn.yaml`` from the API, decrypted with the
    caller's API key ``key``, under the environment's overrides (the file is
    not fetched when the environment configures the CDN completely)."""
    text = None
    if not CdnConfig.complete_without_yaml(overrides):
        wire = await api.fetch_part("", CDN_SETTINGS_FILE, hardware)
        text = crypto.decrypt_v1(key, wire).decode("utf-8", errors="replace")
    return CdnConfig.resolve(text, overrides)


class UpstreamUser:
    """One upstream user's calls for an unlock: either through the device's
    own session or through a separate one that leaves the device alone."""

    def __init__(
        self,
        api: ResourceApiClient,
        identity: Identity,
        hardware: str,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.api = api
        self.identity = identity
        self.hardware = hardware
        self._http = http

    @property
    def role(self) -> str:
        return self.identity.role

    async def key_fragment(self) -> bytes:
        return await self.api.key_fragment()

    async def fetch_small(self, folder: str, file_name: str) -> bytes:
        """A part served by the API, with this user's per-device encryption removed."""
        creds = self.api.credentials
        if creds is None:
            raise DeviceNotLoggedIn()
        wire = await self.api.fetch_part(folder, file_name, self.hardware)
        return crypto.decrypt_v1(crypto.api_key(creds.email, creds.password, self.hardware), wire)

    async def close(self) -> None:
        """Ends a separate session; the device's own stays."""
        if self._http is not None:
            await self._http.close()


class DeviceSession:
    def __init__(self, settings: Settings, api: ResourceApiClient, hardware: str) -> None:
        self.settings = settings
        self.api = api
        self.hardware = hardware
        self._cdn: Cdn | None = None
        self._cdn_lock = asyncio.Lock()
        # CDN clients of an earlier user, kept open for the loads that still
        # stream through them; closed with the session.
        self._retired: list[Cdn] = []

    def api_key(self) -> bytes:
        creds = self.api.credentials
        if creds is None:
            raise DeviceNotLoggedIn()
        return crypto.api_key(creds.email, creds.password, self.hardware)

    def may_switch(self, caller_role: str | None) -> bool:
        """Whether a caller may change the device's upstream user: anyone in
        ``compat`` mode (as Azaion.Loader), else only Admin and ApiAdmin."""
        return self.settings.auth_mode != "required" or caller_role in ADMINS

    def _is_current(self, email: str) -> bool:
        creds = self.api.credentials
        return creds is not None and creds.email == email

    async def login(self, email: str, password: str, *, caller_role: str | None) -> Identity:
        """Logs the device in upstream as ``email``.

        ``caller_role`` is the role of the caller's bearer token (None
        without one). Logging in as the current user again is always
        allowed; a different user needs a caller who may switch, or that
        user's credentials being an Admin's or ApiAdmin's (which makes the
        caller one). Otherwise the password is still checked, then
        ``Forbidden`` is raised and the device is left as it was.
        """
        if not (self.may_switch(caller_role) or self._is_current(email)):
            identity = await self.api.check_credentials(email, password)
            if identity.role not in ADMINS:
                raise Forbidden(SWITCH_DENIED)
        previous = self.api.credentials
        identity = await self.api.login(email, password)
        if previous is not None and previous.email != email:
            # A different user may have different CDN settings.
            await self.reset()
        return identity

    async def sign_in(self, email: str, password: str, *, caller_role: str | None) -> UpstreamUser:
        """Proves ``email``'s password for an unlock. A caller who may switch
        (``may_switch``) logs the device in as that user, as Azaion.Loader's
        unlock did; anyone else gets a separate session, closed by
        ``UpstreamUser.close``, and the device stays logged in as it was."""
        if self.may_switch(caller_role):
            identity = await self.login(email, password, caller_role=caller_role)
            return UpstreamUser(self.api, identity, self.hardware)
        http = aiohttp.ClientSession(raise_for_status=False)
        try:
            api = ResourceApiClient(
                self.settings.resource_api_url,
                http,
                timeout=self.settings.api_timeout,
                jwt_key=self.settings.upstream_jwt_key,
            )
            identity = await api.login(email, password)
        except BaseException:
            await http.close()
            raise
        return UpstreamUser(api, identity, self.hardware, http)

    async def fetch_small(self, folder: str, file_name: str) -> bytes:
        """A part served by the API, with the per-device encryption removed."""
        wire = await self.api.fetch_part(folder, file_name, self.hardware)
        return crypto.decrypt_v1(self.api_key(), wire)

    async def cdn(self) -> Cdn:
        """The CDN clients, opened on first use with ``cdn.yaml`` from the API
        (unless the environment configures the CDN completely)."""
        async with self._cdn_lock:
            if self._cdn is None:
                config = await fetch_cdn_config(
                    self.api,
                    self.api_key(),
                    self.hardware,
                    self.settings.cdn,
                )
                cdn = Cdn(config, connect_timeout=self.settings.cdn_connect_timeout)
                self._cdn = await cdn.__aenter__()
                log.info("CDN at %s", config.host)
            return self._cdn

    async def reset(self) -> None:
        """Drops the CDN clients: new loads open new ones. Loads in flight
        keep theirs, which stay open until the session closes (a change of
        user needs an admin in ``required`` mode, so few ever pile up)."""
        async with self._cdn_lock:
            if self._cdn is not None:
                self._retired.append(self._cdn)
                self._cdn = None

    async def close(self) -> None:
        async with self._cdn_lock:
            clients, self._retired = [*self._retired, *([self._cdn] if self._cdn else [])], []
            self._cdn = None
        for cdn in clients:
            try:
                await cdn.__aexit__(None, None, None)
            except Exception:
                log.warning("closing the CDN clients failed", exc_info=True)
