"""Issuing, rotating and revoking agent credentials."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from edgeloader.auth import signing_key
from edgeloader.auth.audit import Auditor
from edgeloader.auth.store import ApiKeyRecord, AuditEntry, AuthStore, RefreshRecord, Rotation
from edgeloader.auth.throttle import Throttle
from edgeloader.auth.tokens import Claims, TokenPair, Tokens, token_hash
from edgeloader.config import Settings
from edgeloader.errors import (
    Forbidden,
    InvalidCredentials,
    NotAuthenticated,
    NotFound,
    ValidationFailed,
)
from edgeloader.roles import Role
from edgeloader.upstream.resource_api import Identity

log = logging.getLogger(__name__)

VALIDITIES = {"1h": 3600, "1d": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400, "never": None}
API_KEY_PREFIX = "elk"
USER_PREFIX = "user:"
KEY_PREFIX = "apikey:"
BAD_CREDENTIALS = "invalid email or password"
BAD_API_KEY = "invalid API key"
BAD_TOKEN = "invalid or expired token"  # noqa: S105 - a message


def secret_hash(secret: str) -> str:
    # API key secrets are 256-bit random: a fast hash is enough to make the
    # stored value useless to a thief, unlike with passwords.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewApiKey:
    record: ApiKeyRecord
    key: str


class AuthService:
    def __init__(
        self, store: AuthStore, tokens: Tokens, throttle: Throttle, auditor: Auditor
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.throttle = throttle
        self.auditor = auditor

    async def _issue(self, subject: str, role: str, family: str | None = None) -> TokenPair:
        pair = self.tokens.issue(subject, role, family)
        if family is None:
            await asyncio.to_thread(self.store.add_refresh, self._record(pair))
        return pair

    @staticmethod
    def _record(pair: TokenPair) -> RefreshRecord:
        c = pair.refresh_claims
        return RefreshRecord(token_hash(pair.refresh), c.family, c.subject, c.role, c.expires_at)

    async def login(
        self,
        email: str,
        client: str,
        route: str,
        upstream_login: Callable[[], Awaitable[Identity]],
        *,
        issue: bool = True,
    ) -> TokenPair | None:
        """Verifies an upstream user through ``upstream_login``, throttled,
        and (unless ``issue`` is false) issues a pair with the role from the
        upstream token."""
        keys = (f"ip:{client}", f"user:{email.lower()}")
        self.throttle.check(*keys)
        subject = USER_PREFIX + email
        try:
            identity = await upstream_login()
        except InvalidCredentials:
            self.throttle.failure(*keys)
            await self.auditor.record(
                subject=subject, role="", action="login", route=route, outcome="denied"
            )
            raise InvalidCredentials(BAD_CREDENTIALS) from None
        self.throttle.success(*keys)
        pair = await self._issue(subject, identity.role) if issue else None
        await self.auditor.record(subject=subject, role=identity.role, action="login", route=route)
        return pair

    async def exchange_api_key(self, api_key: str, client: str, route: str) -> TokenPair:
        key_id, secret = _split_key(api_key)
        keys = (f"ip:{client}", f"key:{key_id}")
        self.throttle.check(*keys)
        record = await asyncio.to_thread(self.store.api_key, key_id) if key_id else None
        # Compare against a dummy when the key is unknown, so timing does not
        # tell unknown keys from wrong secrets.
        expected = record.secret_hash if record else secret_hash("unknown" + secrets.token_hex(8))
        matches = hmac.compare_digest(expected, secret_hash(secret))
        if record is None or not matches or not record.usable(time.time()):
            self.throttle.failure(*keys)
            await self.auditor.record(
                subject=KEY_PREFIX + key_id, role="", action="token", route=route, outcome="denied"
            )
            raise InvalidCredentials(BAD_API_KEY)
        self.throttle.success(*keys)
        pair = await self._issue(KEY_PREFIX + record.id, record.role)
        await self.auditor.record(
            subject=KEY_PREFIX + record.id, role=record.role, action="token", route=route
        )
        return pair

    async def refresh(self, refresh_token: str, route: str) -> TokenPair:
        claims = self.tokens.verify(refresh_token, "refresh")
        if claims.subject.startswith(KEY_PREFIX):
            record = await asyncio.to_thread(
                self.store.api_key, claims.subject.removeprefix(KEY_PREFIX)
            )
            if record is None or not record.usable(time.time()):
                raise NotAuthenticated(BAD_TOKEN)
        pair = self.tokens.issue(claims.subject, claims.role, claims.family)
        outcome = await asyncio.to_thread(
            self.store.rotate_refresh, token_hash(refresh_token), self._record(pair)
        )
        if outcome is Rotation.REUSED:
            await self.auditor.record(
                subject=claims.subject,
                role=claims.role,
                action="refresh",
                route=route,
                outcome="reuse-detected",
                detail=f"family {claims.family} revoked",
            )
            raise NotAuthenticated("refresh token already used; the session is revoked")
        if outcome is Rotation.UNKNOWN:
            raise NotAuthenticated(BAD_TOKEN)
        await self.auditor.record(
            subject=claims.subject, role=claims.role, action="refresh", route=route
        )
        return pair

    async def authenticate(self, access_token: str) -> Claims:
        claims = self.tokens.verify(access_token, "access")
        if await asyncio.to_thread(self.store.access_revoked, claims.jti):
            raise NotAuthenticated(BAD_TOKEN)
        return claims

    async def logout(self, access: Claims, refresh_token: str, route: str) -> None:
        """Revokes the caller's access token and the refresh token's family."""
        try:
            refresh = self.tokens.verify(refresh_token, "refresh")
        except NotAuthenticated:
            refresh = None
        owned = refresh is not None and refresh.subject == access.subject
        if not owned or not await asyncio.to_thread(
            self.store.revoke_refresh, token_hash(refresh_token), access.subject
        ):
            raise Forbidden("that refresh token is not yours")
        await asyncio.to_thread(self.store.revoke_access, access.jti, access.expires_at)
        await self.auditor.record(
            subject=access.subject, role=access.role, action="logout", route=route
        )

    # API key management (Admin)

    async def create_api_key(
        self, name: str, role: str, validity: str, by: Claims, route: str
    ) -> NewApiKey:
        if not name or len(name) > 100:
            raise ValidationFailed("name must be 1-100 characters")
        if role not in Role.names():
            raise ValidationFailed(f"role must be one of: {', '.join(Role.names())}")
        if validity not in VALIDITIES:
            raise ValidationFailed(f"validity must be one of: {', '.join(VALIDITIES)}")
        now = time.time()
        lifetime = VALIDITIES[validity]
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=key_id,
            name=name,
            role=role,
            secret_hash=secret_hash(secret),
            created_at=now,
            expires_at=None if lifetime is None else now + lifetime,
            revoked_at=None,
        )
        await asyncio.to_thread(self.store.add_api_key, record)
        await self.auditor.record(
            subject=by.subject,
            role=by.role,
            action="key-create",
            route=route,
            resource=key_id,
            detail=f"{name} as {role}, {validity}",
        )
        return NewApiKey(record, f"{API_KEY_PREFIX}_{key_id}_{secret}")

    async def store_audit(self, since: float, limit: int) -> list[AuditEntry]:
        return await asyncio.to_thread(self.store.audit, since, limit)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return await asyncio.to_thread(self.store.api_keys)

    async def revoke_api_key(self, key_id: str, by: Claims, route: str) -> None:
        if not await asyncio.to_thread(self.store.revoke_api_key, key_id, time.time()):
            raise NotFound(f"no active API key {key_id!r}")
        await self.auditor.record(
            subject=by.subject, role=by.role, action="key-revoke", route=route, resource=key_id
        )


def _split_key(api_key: str) -> tuple[str, str]:
    """``elk_<id>_<secret>`` → (id, secret); ("", "") when malformed."""
    prefix, _, rest = api_key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != API_KEY_PREFIX or not key_id or not secret:
        return "", ""
    return key_id, secret


@contextlib.asynccontextmanager
async def open_auth(settings: Settings, fingerprint: str) -> AsyncIterator[AuthService]:
    """The auth service for the app's lifetime: the sealed signing key, the
    store, and an hourly task that prunes expired records."""
    key = await asyncio.to_thread(signing_key.load_or_create, settings.state_dir, fingerprint)
    store = await asyncio.to_thread(AuthStore, settings.state_dir)
    tokens = Tokens(
        key,
        issuer=settings.token_issuer,
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
    )
    pruner = asyncio.create_task(_prune_forever(store), name="auth-store-prune")
    try:
        yield AuthService(store, tokens, Throttle(), Auditor(store))
    finally:
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
        store.close()


async def _prune_forever(store: AuthStore, every: float = 3600.0) -> None:
    """Drops expired revocations and refresh records once an hour."""
    while True:
        removed = await asyncio.to_thread(store.prune)
        if removed:
            log.info("auth store: pruned %d expired records", removed)
        await asyncio.sleep(every)
