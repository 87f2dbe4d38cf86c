"""What every service needs of the device's upstream session: the Resource
API client, the device fingerprint, the per-device API key and the CDN."""

from __future__ import annotations

import asyncio
import logging

from edgeloader import crypto
from edgeloader.config import CdnOverrides, Settings
from edgeloader.errors import DeviceNotLoggedIn
from edgeloader.upstream.cdn import Cdn, CdnConfig
from edgeloader.upstream.resource_api import Identity, ResourceApiClient

log = logging.getLogger(__name__)

CDN_SETTINGS_FILE = "cdn.yaml"


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


class DeviceSession:
    def __init__(self, settings: Settings, api: ResourceApiClient, hardware: str) -> None:
        self.settings = settings
        self.api = api
        self.hardware = hardware
        self._cdn: Cdn | None = None
        self._cdn_lock = asyncio.Lock()

    def api_key(self) -> bytes:
        creds = self.api.credentials
        if creds is None:
            raise DeviceNotLoggedIn()
        return crypto.api_key(creds.email, creds.password, self.hardware)

    async def login(self, email: str, password: str) -> Identity:
        """Logs the device in upstream as ``email``. A different user may
        have different CDN settings, so the CDN clients are dropped then."""
        previous = self.api.credentials
        identity = await self.api.login(email, password)
        if previous is not None and previous.email != email:
            await self.reset()
        return identity

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
        """Drops the CDN clients; they are opened again on next use."""
        async with self._cdn_lock:
            if self._cdn is not None:
                await self._cdn.__aexit__(None, None, None)
                self._cdn = None

    async def close(self) -> None:
        await self.reset()
