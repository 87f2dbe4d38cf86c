"""The service's private folders: created 0700, and tightened if found looser."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

__all__ = ["ensure_private_dir"]

log = logging.getLogger(__name__)


def ensure_private_dir(path: Path) -> Path:
    """Creates ``path`` (mode 0700) or tightens an existing one to 0700.

    The state folder holds the sealed signing key and the databases; group
    or world access to it is never intended, so it is corrected and logged.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(mode & 0o700)
        log.warning("%s was mode %o; tightened to %o", path, mode, mode & 0o700)
    return path
