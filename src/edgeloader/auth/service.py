"""Issuing, rotating and revoking agent credentials."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from pydantic import Field

from edgeloader.auth import signing_key
from edgeloader.auth.audit import Auditor
from edgeloader.auth.store import ApiKeyRecord, AuditEntry, AuthStore, RefreshRecord, Rotation
from edgeloader.auth.throttle import Reservation, Throttle, ThrottlePolicy
from edgeloader.auth.tokens import Claims, TokenPair, Tokens, token_hash
from edgeloader.config import Settings
from edgeloader.errors import (
    Forbidden,
    InvalidCredentials,
    NotAuthenticated,
    NotFound,
    TooManyAttempts,
    ValidationFailed,
)
from edgeloader.events import EventBus, security_event
from edgeloader.metrics import Metrics
from edgeloader.roles import Role

log = logging.getLogger(__name__)

VALIDITIES = {"1h": 3600, "1d": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400, "never": None}
API_KEY_PREFIX = "elk"
USER_PREFIX = "user:"
KEY_PREFIX = "apikey:"
BAD_CREDENTIALS = "invalid email or password"
BAD_API_KEY = "invalid API key"
BAD_TOKEN = "invalid or expired token"  # noqa: S105 - a message
#: The longest email accepted (RFC 5321's longest path): the throttle and
#: the audit never see a longer identity.
MAX_EMAIL = 254
MAX_PASSWORD = 1024
_KEY_ID = re.compile(r"[0-9a-f]{16}")
#: An API key's name: letters (any script), digits, spaces and ``._:@/()+-``;
#: no control characters and nothing markup could make use of.
KEY_NAME = r"^[\w .:@/()+-]{1,100}$"
_KEY_NAME = re.compile(KEY_NAME)
_MAX_KEY_SECRET = 128


def secret_hash(secret: str) -> str:
    # API key secrets are 256-bit random: a fast hash is enough to make the
    # stored value useless to a thief, unlike with passwords.
    return hashlib.sha256(secret.encode()).hexdigest()


class NewApiKey(ApiKeyRecord):
    """A key just created: its record and, this once, the key itself."""

    api_key: str = Field(description="the key itself, shown this once")


class Verified(Protocol):
    """What a credential check returns: at least the user's role."""

    @property
    def role(self) -> str: ...


V = TypeVar("V", bound=Verified)


def identity_key(email: str) -> str:
    """The throttle key of an email: normalised at least as loosely as an
    upstream could match it, so that no spelling gets a fresh count."""
    return "user:" + unicodedata.normalize("NFKC", email).strip().casefold()


def address_key(client: str) -> str:
    """The throttle key of a client address; IPv6 by its /64, which one
    host usually holds whole."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return f"ip:{client[:64]}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


def check_login_fields(email: str, password: str) -> None:
    if len(email) > MAX_EMAIL:
        raise ValidationFailed(f"email must be at most {MAX_EMAIL} characters")
    if len(password) > MAX_PASSWORD:
        raise ValidationFailed(f"password must be at most {MAX_PASSWORD} characters")


class LoginAttempt:
    """One reserved attempt to prove an upstream user's password
    (``AuthService.begin_login``). ``run`` settles it once: a wrong password
    counts and audits the denial, a right one clears the counts, and an
    attempt that could not be judged (the Resource API failed, the caller
    left) does not count."""

    def __init__(self, service: AuthService, email: str, ticket: Reservation, route: str):
        self._service = service
        self._ticket = ticket
        self.subject = USER_PREFIX + email
        self.route = route

    async def run(self, verify: Callable[[], Awaitable[V]]) -> V:
        auditor, ticket = self._service.auditor, self._ticket
        try:
            verified = await verify()
        except InvalidCredentials:
            await ticket.failed()
            await auditor.record(
                subject=self.subject, role="", action="login", route=self.route, outcome="denied"
            )
            raise InvalidCredentials(BAD_CREDENTIALS) from None
        except Forbidden as exc:
            # The password was right; what was asked of it is not allowed.
            await ticket.succeeded()
            await auditor.record(
                subject=self.subject,
                role="",
                action="login",
                route=self.route,
                outcome="forbidden",
                detail=exc.detail,
            )
            raise
        except BaseException:
            await ticket.release()
            raise
        await ticket.succeeded()
        await auditor.record(
            subject=self.subject, role=verified.role, action="login", route=self.route
        )
        return verified

    async def abandon(self) -> None:
        """Gives the attempt back without running it."""
        await self._ticket.release()


class AuthService:
    def __init__(
        self,
        store: AuthStore,
        tokens: Tokens,
        throttle: Throttle,
        auditor: Auditor,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.throttle = throttle
        self.auditor = auditor
        self.metrics = auditor.metrics
        self.events = events

    async def _reserve(
        self, keys: tuple[str, ...], subject: str, client: str, route: str
    ) -> Reservation:
        """``throttle.reserve``; a refusal is counted and told to admins."""
        try:
            return await self.throttle.reserve(keys)
        except TooManyAttempts as exc:
            self.metrics.auth_event("throttled")
            if self.events is not None:
                self.events.publish(
                    security_event(
                        "throttled",
                        subject=subject,
                        client=client,
                        route=route,
                        retryAfter=exc.retry_after,
                    )
                )
            raise

    async def _issue(self, subject: str, role: str, family: str | None = None) -> TokenPair:
        pair = self.tokens.issue(subject, role, family)
        if family is None:
            await asyncio.to_thread(self.store.add_refresh, self._record(pair))
        return pair

    @staticmethod
    def _record(pair: TokenPair) -> RefreshRecord:
        c = pair.refresh_claims
        return RefreshRecord(
            token_hash(pair.refresh_token), c.family, c.subject, c.role, c.expires_at
        )

    async def begin_login(self, email: str, password: str, client: str, route: str) -> LoginAttempt:
        """Reserves one password attempt for ``email`` from ``client``, or
        raises ``TooManyAttempts`` (429). Every route that takes an upstream
        password goes through here: the login routes and ``/unlock``."""
        check_login_fields(email, password)
        ticket = await self._reserve(
            (address_key(client), identity_key(email)), USER_PREFIX + email, client, route
        )
        return LoginAttempt(self, email, ticket, route)

    async def login(
        self,
        email: str,
        password: str,
        client: str,
        route: str,
        upstream_login: Callable[[], Awaitable[V]],
        *,
        issue: bool = True,
    ) -> TokenPair | None:
        """Verifies an upstream user through ``upstream_login``, throttled,
        and (unless ``issue`` is false) issues a pair with the upstream role."""
        attempt = await self.begin_login(email, password, client, route)
        verified = await attempt.run(upstream_login)
        return await self._issue(attempt.subject, verified.role) if issue else None

    async def exchange_api_key(self, api_key: str, client: str, route: str) -> TokenPair:
        record = await self._check_api_key(api_key, client, route)
        pair = await self._issue(KEY_PREFIX + record.id, record.role)
        await self.auditor.record(
            subject=KEY_PREFIX + record.id, role=record.role, action="token", route=route
        )
        return pair

    async def authenticate_api_key(self, api_key: str, client: str, route: str) -> Claims:
        """An API key sent as the bearer itself, where a route allows it
        (``/metrics``: a scraper sends one static token). Checked and
        throttled as an exchange, a failure audited as one; a success is
        counted but not audited (a scraper calls every few seconds)."""
        record = await self._check_api_key(api_key, client, route)
        self.metrics.auth_event("key_bearer_ok")
        return Claims(
            subject=KEY_PREFIX + record.id,
            role=record.role,
            typ="access",
            jti="",
            family="",
            expires_at=record.expires_at if record.expires_at is not None else math.inf,
        )

    async def _check_api_key(self, api_key: str, client: str, route: str) -> ApiKeyRecord:
        """The usable key ``api_key`` names, throttled; else InvalidCredentials."""
        key_id, secret = _split_key(api_key)
        ticket = await self._reserve(
            (address_key(client), f"key:{key_id}"), KEY_PREFIX + key_id, client, route
        )
        try:
            record = await asyncio.to_thread(self.store.api_key, key_id) if key_id else None
        except BaseException:
            await ticket.release()
            raise
        # Compare against a dummy when the key is unknown, so timing does not
        # tell unknown keys from wrong secrets.
        expected = record.secret_hash if record else secret_hash("unknown" + secrets.token_hex(8))
        matches = hmac.compare_digest(expected, secret_hash(secret))
        if record is None or not matches or not record.usable(time.time()):
            await ticket.failed()
            await self.auditor.record(
                subject=KEY_PREFIX + key_id, role="", action="token", route=route, outcome="denied"
            )
            raise InvalidCredentials(BAD_API_KEY)
        await ticket.succeeded()
        return record

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
            if self.events is not None:
                self.events.publish(
                    security_event(
                        "refresh-reuse", subject=claims.subject, role=claims.role, route=route
                    )
                )
            raise NotAuthenticated("refresh token already used; the session is revoked")
        if outcome is Rotation.UNKNOWN:
            raise NotAuthenticated(BAD_TOKEN)
        await self.auditor.record(
            subject=claims.subject, role=claims.role, action="refresh", route=route
        )
        return pair

    async def authenticate(self, access_token: str) -> Claims:
        """A valid access token's claims. Checked on every use: the token's
        own revocation, its refresh family's, and its API key's."""
        try:
            claims = self.tokens.verify(access_token, "access")
            key_id = (
                claims.subject.removeprefix(KEY_PREFIX)
                if claims.subject.startswith(KEY_PREFIX)
                else None
            )
            if await asyncio.to_thread(
                self.store.access_revoked, claims.jti, claims.family, key_id
            ):
                raise NotAuthenticated(BAD_TOKEN)
        except NotAuthenticated:
            self.metrics.auth_event("access_denied")
            raise
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
        if not _KEY_NAME.fullmatch(name) or not name.strip():
            raise ValidationFailed(
                "name must be 1-100 letters, digits, spaces or ._:@/()+- characters"
            )
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
        return NewApiKey(**dict(record), api_key=f"{API_KEY_PREFIX}_{key_id}_{secret}")

    async def store_audit(
        self, since: float, limit: int, *, newest: bool = False
    ) -> list[AuditEntry]:
        return await asyncio.to_thread(self.store.audit, since, limit, newest=newest)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return await asyncio.to_thread(self.store.api_keys)

    async def revoke_api_key(self, key_id: str, by: Claims, route: str) -> None:
        if not await asyncio.to_thread(self.store.revoke_api_key, key_id, time.time()):
            raise NotFound(f"no active API key {key_id!r}")
        await self.auditor.record(
            subject=by.subject, role=by.role, action="key-revoke", route=route, resource=key_id
        )


def _split_key(api_key: str) -> tuple[str, str]:
    """``elk_<id>_<secret>`` → (id, secret); ("", "") when malformed (which
    includes an ID that is not 16 hex digits and an overlong secret)."""
    prefix, _, rest = api_key.partition("_")
    key_id, _, secret = rest.partition("_")
    if (
        prefix != API_KEY_PREFIX
        or not _KEY_ID.fullmatch(key_id)
        or not secret
        or len(secret) > _MAX_KEY_SECRET
    ):
        return "", ""
    return key_id, secret


@contextlib.asynccontextmanager
async def open_auth(
    settings: Settings, fingerprint: str, metrics: Metrics, events: EventBus | None = None
) -> AsyncIterator[AuthService]:
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
    limits = settings.auth_limits
    pruner = asyncio.create_task(
        _prune_forever(store, limits.audit_retention), name="auth-store-prune"
    )
    throttle = Throttle(store, ThrottlePolicy.from_limits(limits))
    try:
        auditor = Auditor(store, metrics, limits.audit_max_bytes)
        yield AuthService(store, tokens, throttle, auditor, events)
    finally:
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
        store.close()


async def _prune_forever(store: AuthStore, audit_retention: float, every: float = 3600.0) -> None:
    """Drops expired records (and audit entries past retention) once an hour."""
    while True:
        removed = await asyncio.to_thread(store.prune, None, audit_retention)
        if removed:
            log.info("auth store: pruned %d expired records", removed)
        await asyncio.sleep(every)
