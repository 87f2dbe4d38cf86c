"""Bodies and answers of agent authentication, API keys and the audit; the
records themselves (token pairs, keys, audit entries) are the services'."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edgeloader.auth.service import KEY_NAME, VALIDITIES
from edgeloader.auth.store import ApiKeyRecord, AuditEntry
from edgeloader.roles import Role
from edgeloader.web.models.base import Answer, Query, RequestBody
from edgeloader.wire import OneOf

MAX_AUDIT_LIMIT = 1000


class ApiKeyExchange(RequestBody):
    api_key: str = Field(min_length=1, description="`elk_…`, as created by POST /api/keys")


class RefreshBody(RequestBody):
    refresh_token: str = Field(min_length=1)


class NewKeyBody(RequestBody):
    # Checked by the service (one rule for every caller); the pattern documents it.
    name: str = Field(json_schema_extra={"pattern": KEY_NAME})
    role: Annotated[str, OneOf(Role.names())]
    validity: Annotated[str, OneOf(tuple(VALIDITIES))]


class AuditQuery(Query):
    since: float = Field(0.0, allow_inf_nan=False, description="epoch seconds")
    limit: int = Field(100, ge=1, le=MAX_AUDIT_LIMIT)
    newest: bool = Field(
        False, description="the newest `limit` entries from `since` on (still oldest first)"
    )


class Done(Answer):
    status: Literal["ok"] = "ok"


class Revoked(Answer):
    status: Literal["revoked"] = "revoked"


class ApiKeys(Answer):
    keys: list[ApiKeyRecord]


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


class AuditEntries(Answer):
    entries: list[AuditEntry]
