"""What the service's diagnostics (``GET /api/doctor``) see of its machine
through ``/proc``: which process listens on a TCP port or a unix socket (the
engine), its environment, the file system a path lives on, and the CPU's
AES instructions.

Everything here reads files only (no helper programs) and takes a ``proc``
root, so that tests can hand it a fake tree. A process of another user is
seen only by root; what cannot be read is None, never an error.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Process",
    "aes_backend_from_cpuinfo",
    "filesystem_of",
    "process",
    "tcp_listeners",
    "unix_listeners",
]

PROC = Path("/proc")
_TCP_LISTEN = "0A"
_UNIX_ACCEPTING = 0x00010000  # __SO_ACCEPTCON: a listening unix socket


@dataclass(frozen=True)
class Process:
    pid: int
    name: str
    uid: int | None
    env: dict[str, str] | None  # None: not readable by us


def _lines_all(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _lines(path: Path) -> list[str]:
    """A /proc/net table without its heading."""
    return _lines_all(path)[1:]


def tcp_listeners(port: int, proc: Path = PROC) -> set[int]:
    """Inodes of the sockets listening on TCP ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in _lines(proc / "net" / table):
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            local_port = fields[1].rsplit(":", 1)[-1]
            with contextlib.suppress(ValueError):
                if int(local_port, 16) == port:
                    inodes.add(int(fields[9]))
    return inodes


def unix_listeners(path: str, proc: Path = PROC) -> set[int]:
    """Inodes of the unix sockets listening at ``path``."""
    inodes = set()
    for line in _lines(proc / "net" / "unix"):
        fields = line.split()
        if len(fields) < 8 or fields[7] != path:
            continue
        with contextlib.suppress(ValueError):
            if int(fields[3], 16) & _UNIX_ACCEPTING:
                inodes.add(int(fields[6]))
    return inodes


def _pids(proc: Path) -> Iterator[int]:
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if entry.name.isdigit():
                yield int(entry.name)


def _holders(inodes: set[int], proc: Path) -> list[int]:
    """Processes that hold one of these socket inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for pid in _pids(proc):
        try:
            fds = list((proc / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) in wanted:
                    found.append(pid)
                    break
    return found


def _read_process(pid: int, proc: Path) -> Process:
    base = proc / str(pid)
    try:
        name = (base / "comm").read_text().strip()
    except OSError:
        name = "?"
    uid = None
    for line in _lines_all(base / "status"):
        if line.startswith("Uid:"):
            with contextlib.suppress(ValueError, IndexError):
                uid = int(line.split()[1])
    env: dict[str, str] | None
    try:
        raw = (base / "environ").read_bytes()
    except OSError:
        env = None
    else:
        env = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                env[key] = value
    return Process(pid, name, uid, env)


def process(inodes: set[int], proc: Path = PROC) -> Process | None:
    """The process that holds one of ``inodes`` (a socket activator such as
    systemd only if nothing else does)."""
    if not inodes:
        return None
    found = [_read_process(pid, proc) for pid in sorted(_holders(inodes, proc))]
    for candidate in found:
        if candidate.pid != 1 and candidate.name != "systemd":
            return candidate
    return found[0] if found else None


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    out, i = [], 0
    while i < len(text):
        code = text[i + 1 : i + 4]
        if text[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def filesystem_of(path: str, proc: Path = PROC) -> tuple[str, str] | None:
    """``(mount point, file system type)`` of the mount that holds ``path``."""
    target = os.path.realpath(path)
    best: tuple[str, str] | None = None
    for line in _lines_all(proc / "self" / "mountinfo"):
        before, sep, after = line.partition(" - ")
        fields = before.split()
        if not sep or len(fields) < 5 or not after.split():
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, after.split()[0])
    return best


def aes_backend_from_cpuinfo(cpuinfo: str, machine: str | None = None) -> tuple[str, bool]:
    """The AES backend that the core's ``aes`` crate picks on this CPU, from
    ``/proc/cpuinfo``'s flags, and whether it is hardware."""
    machine = (machine or platform.machine()).lower()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if {"vaes", "avx512f"} <= flags:
            return "VAES-512 (x86 AES-NI with AVX-512 VAES)", True
        if "vaes" in flags:
            return "VAES-256 (x86 AES-NI with VAES)", True
        if "aes" in flags:
            return "AES-NI (x86)", True
    elif machine in ("aarch64", "arm64") and "aes" in flags:
        return "ARMv8 AES (crypto extensions)", True
    return f"software (no AES instructions found on {machine})", False
