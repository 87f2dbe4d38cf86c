"""What the publishing tools (the ``edgeloader-publisher`` distribution)
use of the device package: one small face, so that the device's internals
can move without breaking them.

The publisher depends on the device package, never the other way round
(docs/architecture.md, "Two distributions"). It encrypts and splits with
the same code the box decrypts with, publishes through the same upload
service, and shares the device's errors, names, roles, manifest format and
command-line conventions.
"""

from __future__ import annotations

from edgeloader import crypto
from edgeloader.cli.output import Progress, UsageError, read_password, run_command
from edgeloader.config import CdnOverrides
from edgeloader.errors import (
    ConfigError,
    EdgeloaderError,
    Forbidden,
    InvalidCredentials,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    UnsafeName,
)
from edgeloader.names import safe_folder, safe_name
from edgeloader.roles import UPLOADERS, Role
from edgeloader.services.manifest import ARCHIVE_KEY, MANIFEST_FILE, SIGNATURE_FILE, Artifact
from edgeloader.services.session import fetch_cdn_config
from edgeloader.services.upload import Published, Uploader
from edgeloader.storage.files import AtomicFile, atomic_write, read_file_chunks
from edgeloader.upstream.cdn import Cdn
from edgeloader.upstream.resource_api import ResourceApiClient

__all__ = [
    "ARCHIVE_KEY",
    "MANIFEST_FILE",
    "SIGNATURE_FILE",
    "UPLOADERS",
    "Artifact",
    "AtomicFile",
    "Cdn",
    "CdnOverrides",
    "ConfigError",
    "EdgeloaderError",
    "Forbidden",
    "InvalidCredentials",
    "InvalidRequest",
    "NotAuthenticated",
    "NotFound",
    "PayloadTooLarge",
    "Progress",
    "Published",
    "ResourceApiClient",
    "Role",
    "UnsafeName",
    "Uploader",
    "UsageError",
    "atomic_write",
    "crypto",
    "fetch_cdn_config",
    "read_file_chunks",
    "read_password",
    "run_command",
    "safe_folder",
    "safe_name",
]
