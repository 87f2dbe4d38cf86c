"""The token signing key, sealed to this device.

The Ed25519 private key is generated on first start and stored encrypted
with AES-256-GCM under a key derived (HKDF-SHA256) from the device
fingerprint and a random salt stored beside it. A state folder copied to
another machine therefore cannot be used to mint tokens there: opening the
key fails, and start-up stops with a clear message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeloader.errors import ConfigError
from edgeloader.storage.files import atomic_write
from edgeloader.storage.state_dir import ensure_private_dir

KEY_FILE = "signing_key.sealed"
_FORMAT = 1
_INFO = b"edgeloader signing key seal v1"
_AAD = b"edgeloader-signing-key-v1"


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    kid: str

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def jwk(self) -> dict[str, str]:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _kid(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def _seal_key(fingerprint: str, salt: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO)
    return hkdf.derive(fingerprint.encode())


def load_or_create(state_dir: Path, fingerprint: str) -> SigningKey:
    """Opens the sealed key in ``state_dir``, creating it on first start."""
    path = state_dir / KEY_FILE
    ensure_private_dir(state_dir)
    if not path.exists():
        private = Ed25519PrivateKey.generate()
        salt, nonce = os.urandom(16), os.urandom(12)
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        sealed = AESGCM(_seal_key(fingerprint, salt)).encrypt(nonce, raw, _AAD)
        doc = {
            "format": _FORMAT,
            "kid": _kid(private),
            "salt": base64.b64encode(salt).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }
        atomic_write(path, json.dumps(doc).encode())
        return SigningKey(private, _kid(private))
    try:
        doc = json.loads(path.read_bytes())
        salt, nonce, sealed = (base64.b64decode(doc[k]) for k in ("salt", "nonce", "sealed"))
        if doc.get("format") != _FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"signing key {path} is unreadable: {exc}") from None
    try:
        raw = AESGCM(_seal_key(fingerprint, salt)).decrypt(nonce, sealed, _AAD)
    except InvalidTag:
        raise ConfigError(
            f"signing key {path} was sealed on another device (the device fingerprint "
            "differs) and cannot be opened here; to start afresh on this device, remove "
            "it, which invalidates every token issued so far"
        ) from None
    private = Ed25519PrivateKey.from_private_bytes(raw)
    return SigningKey(private, _kid(private))
