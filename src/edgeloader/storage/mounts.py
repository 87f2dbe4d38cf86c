"""Memory-backed folders the loader mounts for itself: a function run's
folder, the model store. Linux only, and root only (``mount(2)``).

A tmpfs keeps what is written there off the box's disk, and its ``size=``
caps it: a write past it fails with ``ENOSPC``. It is mounted in the
loader's mount namespace, so the container engine sees it only when it
shares that namespace (docs/functions.md, "Whose mount namespace").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

__all__ = ["mount_tmpfs", "mounted_under", "tmpfs_size", "unmount"]

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_tmpfs(
    path: Path, size: int, *, uid: int = 0, mode: int = 0o700, noexec: bool = False
) -> None:
    """A tmpfs of ``size`` bytes at ``path`` (an existing folder), owned by
    ``uid`` (and its group of the same number), ``nosuid,nodev``."""
    flags = _MS_NOSUID | _MS_NODEV | (_MS_NOEXEC if noexec else 0)
    data = f"size={size},mode={mode:o},uid={uid},gid={uid}".encode()
    if _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", flags, data) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot mount a tmpfs at {path}: {os.strerror(code)}")


def unmount(path: Path) -> None:
    """Detaches the mount at ``path``; not mounted is no error."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"cannot unmount {path}: {os.strerror(code)}")


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, file system type, super options) of this namespace."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields = line.split(" ")
            dash = fields.index("-")
            point = _unescape(fields[4])
            found.append((point, fields[dash + 1], fields[dash + 3].rstrip("\n")))
    return found


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


def mounted_under(root: Path) -> list[Path]:
    """Mount points at or under ``root``, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = [p for p, _, _ in _mounts() if (p + "/").startswith(prefix)]
    return [Path(p) for p in sorted(points, key=len, reverse=True)]


def tmpfs_size(path: Path) -> int | None:
    """The ``size=`` of the tmpfs mounted at ``path``, in bytes; None if
    ``path`` is no tmpfs mount point."""
    for point, fstype, options in reversed(_mounts()):
        if point == str(path):
            if fstype != "tmpfs":
                return None
            for option in options.split(","):
                if option.startswith("size="):
                    return _bytes(option.removeprefix("size="))
            return None
    return None


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if text and text[-1].lower() in units:
        return int(text[:-1]) * units[text[-1].lower()]
    return int(text)
