"""An independent implementation of the publishing side's crypto (DESIGN
§4), built on `cryptography` and hashlib only, so integration tests do not
check the Rust core against itself."""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


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
    """(small, big) exactly as DESIGN §4 describes."""
    ct = encrypt_v1(resource_key(), plaintext)
    small_len = min(3072, int(0.3 * len(ct)))
    return ct[:small_len], ct[small_len:]
