"""An independent implementation of the publishing side's crypto
(docs/protocol.md), built on `cryptography` and hashlib only, so
integration tests do not check the Rust core against itself."""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hash_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha384(text.encode()).digest()).decode()


def resource_key() -> bytes:
    return hashlib.sha256(hash_b64("-#%@AzaionKey@%#---234sdfklgvhjbnn").encode()).digest()


def api_key(email: str, password: str, hardware: str) -> bytes:
    hw = hash_b64(f"Azaion_{hardware}_%$$$)0_")
    return hashlib.sha256(hash_b64(f"{email}-{password}-{hw}-#%@AzaionKey@%#---").encode()).digest()


def encrypt_v1(key: bytes, plaintext: bytes, iv: bytes | None = None) -> bytes:
    iv = iv or os.urandom(16)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(padder.update(plaintext) + padder.finalize()) + enc.finalize()


def decrypt_v1(key: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(dec.update(data[16:]) + dec.finalize()) + unpadder.finalize()


def split_resource(plaintext: bytes) -> tuple[bytes, bytes]:
    """(small, big) exactly as docs/protocol.md describes."""
    ct = encrypt_v1(resource_key(), plaintext)
    small_len = min(3072, int(0.3 * len(ct)))
    return ct[:small_len], ct[small_len:]


# -- format v2, from the text of docs/protocol.md ("Format v2") --------------------

SALT = bytes(range(0x10, 0x20))
PREFIX = bytes(range(0xA0, 0xA7))


def oracle_header(s: int, salt: bytes, prefix: bytes) -> bytes:
    return b"ELD2" + bytes([0x02, 0x01, s, 0x00]) + salt + prefix + b"\x00"


def oracle_payload_key(key: bytes, header: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, header[8:24], b"edgeloader/v2 payload").derive(key)


def oracle_nonce(header: bytes, i: int, last: bool) -> bytes:
    return header[24:31] + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def oracle_encrypt(
    key: bytes, plaintext: bytes, s: int = 16, salt: bytes = SALT, prefix: bytes = PREFIX
) -> bytes:
    header = oracle_header(s, salt, prefix)
    aead = AESGCM(oracle_payload_key(key, header))
    size = 1 << s
    chunks = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
    out = [header]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        out.append(aead.encrypt(oracle_nonce(header, i, last), chunk, header))
    return b"".join(out)


def oracle_layout(header: bytes, file_length: int) -> tuple[int, int] | None:
    """(k, plaintext length), or None for an invalid size: the rule as written."""
    if file_length < 48:
        return None
    n = file_length - 32
    f = (1 << header[6]) + 16
    k = -(-n // f)
    r = n - (k - 1) * f
    if r < 16 or (k > 1 and r < 17) or k > 2**32:
        return None
    return k, n - 16 * k


def oracle_decrypt(key: bytes, data: bytes) -> bytes:
    header = data[:32]
    ok_header = (
        len(header) == 32
        and header[:4] == b"ELD2"
        and header[4] == 0x02
        and header[5] == 0x01
        and 16 <= header[6] <= 24
        and header[7] == 0
        and header[31] == 0
    )
    if not ok_header:
        raise InvalidTag
    layout = oracle_layout(header, len(data))
    if layout is None:
        raise InvalidTag
    k, _ = layout
    aead = AESGCM(oracle_payload_key(key, header))
    f = (1 << header[6]) + 16
    return b"".join(
        aead.decrypt(
            oracle_nonce(header, i, i == k - 1), data[32 + i * f : 32 + (i + 1) * f], header
        )
        for i in range(k)
    )


# -- segment lists, from the text of docs/protocol.md ("Segment lists") --------------


def segment_list(ct: bytes, segment: int) -> bytes:
    """SHA-256 of each ``segment``-byte slice of ``ct``, concatenated."""
    return b"".join(
        hashlib.sha256(ct[i : i + segment]).digest() for i in range(0, len(ct), segment)
    )
