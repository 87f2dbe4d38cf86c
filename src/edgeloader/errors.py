"""The one exception hierarchy of edgeloader.

Every error the service raises on purpose is an ``EdgeloaderError``. Errors
from lower layers (aiohttp, botocore, aiodocker, the OS) are mapped to these
leaves at the boundary where they happen, so handlers and the CLI deal with
one family only. ``status`` is the HTTP status the web layer answers with.

This module must not import the native core: the core imports it to raise
``DecryptionError``.
"""

from __future__ import annotations

#: The single message of every decryption failure (no padding oracle).
DECRYPTION_FAILED = "decryption failed"


class EdgeloaderError(Exception):
    """Base of every error edgeloader raises on purpose.

    ``retry_after``, when set, is how many seconds the caller should wait
    before trying again (the answer's ``Retry-After``); any error may carry
    it, whatever it means.
    """

    status: int = 500
    retry_after: int | None = None

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        self.detail = detail or self.default_detail()
        if retry_after is not None:
            self.retry_after = retry_after
        super().__init__(self.detail)

    @classmethod
    def default_detail(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")


class ConfigError(EdgeloaderError):
    """Invalid configuration."""


class DecryptionError(EdgeloaderError):
    """Decryption failed.

    Bad padding, truncation and a wrong key all raise this, always with the
    same message, so a caller cannot tell which check failed.
    """

    status = 502

    def __init__(self, detail: str | None = None) -> None:
        # The detail is ignored on purpose: one message for every cause.
        super().__init__(DECRYPTION_FAILED)


class StreamFinalized(EdgeloaderError):
    """Stream already finalized.

    A programming error: a cipher stream was used after ``finalize``.
    """


class InvalidRequest(EdgeloaderError):
    """Invalid request."""

    status = 400


class UnsafeName(InvalidRequest):
    """Unsafe file or folder name."""


class ValidationFailed(EdgeloaderError):
    """Malformed request body."""

    status = 422


class UnsupportedMediaType(EdgeloaderError):
    """A body of a type the route does not take (JSON sent as text/plain)."""

    status = 415


class PayloadTooLarge(EdgeloaderError):
    """Request body too large."""

    status = 413


class NotAuthenticated(EdgeloaderError):
    """Not logged in."""

    status = 401


class DeviceNotLoggedIn(NotAuthenticated):
    """The device is not logged in upstream."""


class InvalidCredentials(NotAuthenticated):
    """Invalid credentials."""


class Forbidden(EdgeloaderError):
    """Not allowed."""

    status = 403


class TooManyAttempts(EdgeloaderError):
    """Too many failed attempts; try again later."""

    status = 429
    retry_after = 1

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(
            detail or f"too many failed attempts; retry in {retry_after} s",
            retry_after=retry_after,
        )


class NotFound(EdgeloaderError):
    """Not found."""

    status = 404


class Conflict(EdgeloaderError):
    """Conflict."""

    status = 409


class Unavailable(EdgeloaderError):
    """Not available on this box as it is set up."""

    status = 503


class ImageGone(Conflict):
    """A function's image is no longer in the engine."""


class UpstreamError(EdgeloaderError):
    """Upstream service failed."""

    status = 502


class ResourceApiError(UpstreamError):
    """Resource API failed."""


class CdnError(UpstreamError):
    """CDN failed."""


class EngineError(UpstreamError):
    """Container engine failed."""


class HardwareError(EdgeloaderError):
    """Device fingerprint could not be collected."""


class QueueFull(EdgeloaderError):
    """A queue (a function's, the pre-staging jobs') is full; try again later."""

    status = 429
    retry_after = 1


class BuildFailed(ValidationFailed):
    """The image build failed."""


class IntegrityError(UpstreamError):
    """Integrity check failed.

    A refusal under the signed release manifest (docs/security.md). Its
    ``reason`` is one of a fixed set, used in the detail, the audit and
    logs; naming it leaks nothing, unlike a decryption failure's cause.
    """

    REASONS = (
        "bad-signature",
        "expired",
        "rollback",
        "not-listed",
        "format",
        "size",
        "segments",
        "hash",
        "unavailable",
    )

    def __init__(self, reason: str, detail: str | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown integrity reason {reason!r}")
        self.reason = reason
        super().__init__(f"integrity: {reason}" + (f": {detail}" if detail else ""))


class TooManyStreams(EdgeloaderError):
    """Too many event streams are open; try again later."""

    status = 429
    retry_after = 5


class ObjectChanged(CdnError):
    """The object changed on the CDN during the read.

    A read pinned to one version (``If-Match`` on its ETag) found another:
    the load stops rather than mix two versions.
    """


class CdnReadFailed(CdnError):
    """A CDN read failed after its retries."""
