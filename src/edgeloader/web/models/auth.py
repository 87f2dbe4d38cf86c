"""Bodies and answers of agent authentication, API keys and the audit."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edgeloader.auth.service import VALIDITIES
from edgeloader.roles import Role
from edgeloader.web.models.base import Answer, OneOf, Query, RequestBody

MAX_AUDIT_LIMIT = 1000
MAX_KEY_NAME = 100


class ApiKeyExchange(RequestBody):
    api_key: str = Field(min_length=1, description="`elk_…`, as created by POST /api/keys")


class RefreshBody(RequestBody):
    refresh_token: str = Field(min_length=1)


class NewKeyBody(RequestBody):
    name: str = Field(min_length=1, max_length=MAX_KEY_NAME)
    role: Annotated[str, OneOf(Role.names())]
    validity: Annotated[str, OneOf(tuple(VALIDITIES))]


class AuditQuery(Query):
    since: float = Field(0.0, allow_inf_nan=False, description="epoch seconds")
    limit: int = Field(100, ge=1, le=MAX_AUDIT_LIMIT)


class TokenPair(Answer):
    access_token: str
    refresh_token: str = Field(description="single use: each refresh returns a new one")
    expires_in: int = Field(description="the access token's lifetime in seconds")
    role: str


class Done(Answer):
    status: Literal["ok"] = "ok"


class Revoked(Answer):
    status: Literal["revoked"] = "revoked"


class ApiKey(Answer):
    """An API key's record; never its secret."""

    id: str
    name: str
    role: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class NewApiKey(ApiKey):
    api_key: str = Field(description="the key itself, shown this once")


class ApiKeys(Answer):
    keys: list[ApiKey]


class Jwk(Answer):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class Jwks(Answer):
    """The keys that verify this box's access tokens."""

    keys: list[Jwk]


class AuditEntry(Answer):
    at: float
    subject: str
    role: str
    action: str
    route: str
    resource: str
    outcome: str
    bytes: int
    detail: str


class AuditEntries(Answer):
    entries: list[AuditEntry]
