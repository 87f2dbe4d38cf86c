"""Publishing service images: ``images.enc = v1(archive_key, docker_save_tar)``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgeloader.crypto import Encryptor, archive_key

__all__ = ["CHUNK_SIZE", "encrypt_archive"]

CHUNK_SIZE = 1024 * 1024


def encrypt_archive(
    src: Path,
    dst: Path,
    fragment: bytes,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Encrypts ``src`` into ``dst`` in format v1 under ``archive_key(fragment)``.

    Streams in 1 MiB chunks; ``progress(done, total)`` is called after each
    chunk with plaintext byte counts. The output is written to a temp file
    beside ``dst`` and renamed into place, so a failure leaves no partial
    file. Returns the size of ``dst``. CPU and disk bound: from async code,
    run it in a thread.
    """
    dst = Path(dst)
    encryptor = Encryptor(archive_key(fragment))
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with open(src, "rb") as source:
        total = os.fstat(source.fileno()).st_size
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                written = out.write(encryptor.iv)
                done = 0
                while n := source.readinto(buffer):
                    written += out.write(encryptor.update(view[:n]))
                    done += n
                    if progress is not None:
                        progress(done, total)
                written += out.write(encryptor.finalize())
                out.flush()
                os.fsync(out.fileno())
            # Ciphertext meant to be shipped: readable like any other file.
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return written
