"""Our access and refresh tokens: JWTs signed with the device's Ed25519 key."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from pydantic import ConfigDict, Field

from edgeloader.auth.signing_key import SigningKey
from edgeloader.errors import NotAuthenticated
from edgeloader.wire import Record

ALGORITHM = "EdDSA"
TokenType = Literal["access", "refresh"]
_REQUIRED = ["sub", "role", "typ", "jti", "fam", "iat", "exp", "iss"]


def token_hash(token: str) -> str:
    """What the store keeps instead of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Claims:
    subject: str
    role: str
    typ: TokenType
    jti: str
    family: str
    expires_at: float


class TokenPair(Record):
    """An access token and its refresh token, as given to an agent."""

    model_config = ConfigDict(frozen=True)

    access_token: str
    refresh_token: str = Field(description="single use: each refresh returns a new one")
    expires_in: int = Field(description="the access token's lifetime in seconds")
    role: str
    refresh_claims: Claims = Field(exclude=True)


class Tokens:
    def __init__(
        self, key: SigningKey, *, issuer: str, access_ttl: float, refresh_ttl: float
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._key.jwk()]}

    def _sign(self, claims: Claims, issued_at: int) -> str:
        payload = {
            "sub": claims.subject,
            "role": claims.role,
            "typ": claims.typ,
            "jti": claims.jti,
            "fam": claims.family,
            "iat": issued_at,
            "exp": int(claims.expires_at),
            "iss": self.issuer,
        }
        return jwt.encode(
            payload, self._key.private, algorithm=ALGORITHM, headers={"kid": self._key.kid}
        )

    def issue(self, subject: str, role: str, family: str | None = None) -> TokenPair:
        """A new pair; a new refresh family unless one is given (rotation)."""
        now = int(time.time())
        family = family or secrets.token_hex(16)
        access = Claims(
            subject, role, "access", secrets.token_hex(16), family, now + self.access_ttl
        )
        refresh = Claims(
            subject, role, "refresh", secrets.token_hex(16), family, now + self.refresh_ttl
        )
        return TokenPair(
            access_token=self._sign(access, now),
            refresh_token=self._sign(refresh, now),
            expires_in=int(self.access_ttl),
            role=role,
            refresh_claims=refresh,
        )

    def verify(self, token: str, typ: TokenType) -> Claims:
        """Signature, algorithm, issuer, expiry and type; revocation is the
        caller's check. Every failure is the same 401."""
        try:
            claims = jwt.decode(
                token,
                self._key.public,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={"require": _REQUIRED},
            )
        except jwt.PyJWTError:
            raise NotAuthenticated("invalid or expired token") from None
        if claims.get("typ") != typ:
            raise NotAuthenticated("invalid or expired token")
        return Claims(
            subject=str(claims["sub"]),
            role=str(claims["role"]),
            typ=typ,
            jti=str(claims["jti"]),
            family=str(claims["fam"]),
            expires_at=float(claims["exp"]),
        )
