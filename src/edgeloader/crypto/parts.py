"""How a resource is stored: its ciphertext split into two named parts.

The split rule itself lives in the Rust core with the formats
(``small_part_length``: ``min(3072, floor(0.3 x len(ct)))``); this module
names the parts and applies the rule to a stream.

The small part (``NAME.small``) is served by the Resource API, the big part
(``NAME.big``) by the CDN (docs/protocol.md). The split rule depends on the
ciphertext's total length only while it is under ``FULL_SMALL_PART_FROM``
(10 KiB); from there on the small part is always ``MAX_SMALL_PART`` bytes,
so a writer holds back at most 10 KiB before the big part can stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from edgeloader._core import FULL_SMALL_PART_FROM, MAX_SMALL_PART, small_part_length

__all__ = [
    "FULL_SMALL_PART_FROM",
    "MAX_SMALL_PART",
    "big_name",
    "segments_name",
    "small_name",
    "small_part_length",
    "split_ciphertext",
    "staging_name",
]


def small_name(name: str) -> str:
    """The Resource API's file name of a resource's small part."""
    return f"{name}.small"


def big_name(name: str) -> str:
    """The CDN's object key of a resource's big part."""
    return f"{name}.big"


def segments_name(name: str) -> str:
    """The Resource API's file name of a resource's segment list
    (``ARCHIVE.segments`` for the unlock archive, in the empty folder)."""
    return f"{name}.segments"


def staging_name(name: str, token: str) -> str:
    """Where an upload's big part waits until its small part is accepted."""
    return f"{name}.big.staging-{token}"


async def split_ciphertext(ciphertext: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The small part, and the rest of the stream as the big part."""
    head = bytearray()
    async for chunk in ciphertext:
        head += chunk
        if len(head) >= FULL_SMALL_PART_FROM:
            break
    # Either the stream ended (head is all of it) or the split is fixed.
    small_len = small_part_length(len(head))
    small, rest = bytes(head[:small_len]), bytes(head[small_len:])
    del head

    async def big() -> AsyncIterator[bytes]:
        if rest:
            yield rest
        async for chunk in ciphertext:
            yield chunk

    return small, big()
