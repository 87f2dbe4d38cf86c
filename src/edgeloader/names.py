"""Validation of the names and folders that callers send us.

A name ends up in a URL path, an S3 key and a cache file path, so anything
that could climb out of a folder or confuse one of them is refused.
"""

from __future__ import annotations

import re

from edgeloader.errors import UnsafeName

MAX_NAME_LENGTH = 200
# Letters, digits and a few separators; no slash, backslash, NUL or control.
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-+@ ]*$")


def safe_name(value: object, what: str = "name") -> str:
    """Returns ``value`` if it is a safe single path component, else raises."""
    if not isinstance(value, str) or not value:
        raise UnsafeName(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise UnsafeName(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if value in (".", "..") or ".." in value or not _SAFE.match(value) or value != value.strip():
        raise UnsafeName(f"unsafe {what}: {value!r}")
    return value


def safe_folder(value: object) -> str:
    """A folder is a single component too; it is also an S3 bucket name,
    which must be 3 to 63 lower-case letters, digits, dots or hyphens."""
    folder = safe_name(value, "folder")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", folder):
        raise UnsafeName(f"unsafe folder: {folder!r} (3-63 of a-z, 0-9, '.', '-')")
    return folder
