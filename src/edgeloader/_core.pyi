"""Type stubs for the native crypto core (checked by mypy.stubtest)."""

from typing import Final, final

from typing_extensions import Buffer

__all__ = [
    "BLOCK_SIZE",
    "DECRYPTION_FAILED",
    "FULL_SMALL_PART_FROM",
    "MAX_SMALL_PART",
    "SEGMENT_DEFAULT",
    "SEGMENT_MAX",
    "SEGMENT_MIN",
    "V2_DEFAULT_CHUNK_LOG2",
    "V2_HEADER_SIZE",
    "V2_MAGIC",
    "V2_MAX_CHUNK_LOG2",
    "V2_MIN_CHUNK_LOG2",
    "V2_TAG_SIZE",
    "ChunkGate",
    "Decryptor",
    "DecryptorV2",
    "Encryptor",
    "EncryptorV2",
    "SegmentGate",
    "SegmentHasher",
    "Sha256",
    "__version__",
    "api_key",
    "archive_key",
    "decrypt_range",
    "decrypt_v1",
    "decrypt_v2",
    "detect_format",
    "encrypt_v1",
    "encrypt_v2",
    "hash_b64",
    "hw_hash",
    "key_from_str",
    "resource_key",
    "segment_count",
    "segment_list",
    "small_part_length",
    "v1_padded_length",
    "v1_plaintext_length",
    "v2_chunk_count",
    "v2_chunk_range",
    "v2_open_chunk",
    "v2_plaintext_length",
    "v2_stored_chunk_size",
]

__version__: Final[str]
BLOCK_SIZE: Final[int]
DECRYPTION_FAILED: Final[str]
MAX_SMALL_PART: Final[int]
FULL_SMALL_PART_FROM: Final[int]
V2_MAGIC: Final[bytes]
V2_HEADER_SIZE: Final[int]
V2_TAG_SIZE: Final[int]
V2_DEFAULT_CHUNK_LOG2: Final[int]
V2_MIN_CHUNK_LOG2: Final[int]
V2_MAX_CHUNK_LOG2: Final[int]
SEGMENT_MIN: Final[int]
SEGMENT_MAX: Final[int]
SEGMENT_DEFAULT: Final[int]

@final
class Decryptor:
    def __new__(cls, key: bytes, iv: bytes) -> Decryptor: ...
    def update(self, data: Buffer) -> bytes: ...
    def update_into(self, data: Buffer, out: Buffer) -> int: ...
    def output_length(self, input_length: int) -> int: ...
    def finalize(self) -> bytes: ...

@final
class Encryptor:
    def __new__(cls, key: bytes, iv: bytes | None = None) -> Encryptor: ...
    @property
    def iv(self) -> bytes: ...
    def update(self, data: Buffer) -> bytes: ...
    def update_into(self, data: Buffer, out: Buffer) -> int: ...
    def output_length(self, input_length: int) -> int: ...
    def finalize(self) -> bytes: ...

@final
class DecryptorV2:
    """Streaming format v2 decryption; releases a chunk only once verified.

    ``output_length`` is exact once the 32 header bytes have been read and an
    upper bound before that.
    """

    def __new__(cls, key: bytes) -> DecryptorV2: ...
    def update(self, data: Buffer) -> bytes: ...
    def update_into(self, data: Buffer, out: Buffer) -> int: ...
    def output_length(self, input_length: int) -> int: ...
    def finalize(self) -> bytes: ...

@final
class EncryptorV2:
    """Streaming format v2 encryption; the output starts with the header."""

    def __new__(
        cls,
        key: bytes,
        chunk_log2: int = 16,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> EncryptorV2: ...
    @property
    def header(self) -> bytes: ...
    @property
    def chunk_size(self) -> int: ...
    def update(self, data: Buffer) -> bytes: ...
    def update_into(self, data: Buffer, out: Buffer) -> int: ...
    def output_length(self, input_length: int) -> int: ...
    def finalize(self) -> bytes: ...

@final
class ChunkGate:
    """Passes a stored v2 file through, releasing each chunk once its tag verifies.

    With ``start`` 0 the input begins with the header, which must equal
    ``header`` and is released with chunk 0; otherwise ``start`` is a
    chunk's offset and the input begins there. A bad tag, a short input,
    bytes after the final chunk or a ``start`` that is not a chunk's raise
    ``DecryptionError``. The call that finds a bad chunk still returns the
    chunks verified before it; then the error is raised by every call.
    """

    def __new__(cls, key: bytes, header: bytes, file_length: int, start: int = 0) -> ChunkGate: ...
    def update(self, data: Buffer) -> bytes: ...
    def finish(self) -> None: ...

@final
class SegmentHasher:
    """Builds the segment list of a ciphertext fed in pieces."""

    def __new__(cls, segment: int) -> SegmentHasher: ...
    def update(self, data: Buffer) -> None: ...
    def finish(self) -> bytes:
        """The list; the hasher is then spent (``StreamFinalized`` after)."""

@final
class SegmentGate:
    """Passes ciphertext through, releasing each segment once it matches the list.

    ``start`` is where the input begins: 0, or a segment boundary when
    resuming. A segment that does not match (changed, cut short, or bytes
    past ``size``) raises ``IntegrityError`` with the reason ``hash``, a list
    of the wrong length one with the reason ``segments``. The call that finds
    a bad segment still returns the segments verified before it; then the
    error is raised by every call.
    """

    def __new__(cls, segment: int, size: int, segments: bytes, start: int = 0) -> SegmentGate: ...
    def update(self, data: Buffer) -> bytes: ...
    def finish(self) -> None: ...
    @property
    def position(self) -> int:
        """The ciphertext offset of the end of what has been released."""

    @property
    def pending(self) -> int:
        """Bytes received and held, not yet released."""

@final
class Sha256:
    def __new__(cls) -> Sha256: ...
    def update(self, data: Buffer) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...

def encrypt_v1(key: bytes, plaintext: Buffer, iv: bytes | None = None) -> bytes: ...
def decrypt_v1(key: bytes, data: Buffer) -> bytes: ...
def v1_padded_length(plaintext_length: int) -> int: ...
def v1_plaintext_length(key: bytes, ciphertext_length: int, last_two_blocks: bytes) -> int: ...
def small_part_length(ciphertext_length: int) -> int: ...
def decrypt_range(key: bytes, prev_block: bytes, ciphertext_slice: Buffer) -> bytes: ...
def hash_b64(s: str) -> str: ...
def hw_hash(hardware: str) -> str: ...
def api_key(email: str, password: str, hardware: str) -> bytes: ...
def resource_key() -> bytes: ...
def archive_key(fragment: bytes) -> bytes: ...
def key_from_str(key_str: str) -> bytes: ...
def encrypt_v2(
    key: bytes,
    plaintext: Buffer,
    chunk_log2: int = 16,
    salt: bytes | None = None,
    nonce_prefix: bytes | None = None,
) -> bytes: ...
def decrypt_v2(key: bytes, data: Buffer) -> bytes: ...
def v2_plaintext_length(header: bytes, file_length: int) -> int: ...
def v2_chunk_count(header: bytes, file_length: int) -> int: ...
def v2_chunk_range(header: bytes, file_length: int, index: int) -> tuple[int, int, bool]: ...
def v2_open_chunk(key: bytes, header: bytes, index: int, is_final: bool, data: Buffer) -> bytes: ...
def v2_stored_chunk_size(header: bytes) -> int: ...
def detect_format(prefix: bytes) -> int: ...
def segment_count(size: int, segment: int) -> int: ...
def segment_list(ciphertext: Buffer, segment: int) -> bytes: ...
