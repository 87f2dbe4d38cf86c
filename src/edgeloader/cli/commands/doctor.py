"""``edgeloader doctor``: what an operator would otherwise check by hand,
one line each, ``ok``, ``warn`` or ``fail``; exit 1 when one fails.

Where each check runs (docs/cli.md):

- through the service, over HTTP: ``service`` (``/health``), ``session``
  (the stored token, ``/status``) and ``device login`` (``/status``'s
  ``authenticated``);
- on this machine, with the service's own settings, when the service runs
  here: ``resource api``, ``engine``, ``state folder``, ``publisher key`` and
  ``engine tmpdir``. The settings are read from the service process's
  environment (``/proc/PID/environ`` of the process that listens on the
  URL's port); when that process cannot be read, from this shell's
  environment, and the line says so. For a service on another machine these
  checks are ``warn: unknown`` (the service has no diagnostics route);
- on this machine always: ``aes`` (this CPU; the core does not report its
  choice, so it is read from ``/proc/cpuinfo`` as the core's ``aes`` crate
  reads the CPU's flags).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeloader.cli import local
from edgeloader.cli.client import Client, ServiceUnreachable, SessionEnded, os_reason
from edgeloader.cli.commands.common import Subcommands, with_client
from edgeloader.cli.output import Console
from edgeloader.config import Settings
from edgeloader.errors import ConfigError, EdgeloaderError

__all__ = ["Check", "add_doctor_command"]

OK, WARN, FAIL = "ok", "warn", "fail"
PROBE_TIMEOUT = 5.0
#: aiodocker's default when DOCKER_HOST is unset.
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
#: podman's spool folder when its TMPDIR is unset.
DEFAULT_ENGINE_TMPDIR = "/var/tmp"  # noqa: S108 - podman's default, only reported
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
#: The one setting every service has in its environment (or none of them).
REQUIRED = "RESOURCE_API_URL"


class DoctorFailed(EdgeloaderError):
    """A check failed."""


@dataclass(frozen=True)
class Check:
    check: str
    verdict: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<4}  {self.check:<14}  {self.detail}"


@dataclass
class ServiceSide:
    """The service as seen from this machine: whether it is local, its
    process, and the settings its checks use."""

    on_this_machine: bool
    process: local.Process | None
    env: Mapping[str, str] | None
    source: str


def add_doctor_command(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    doctor = commands.add_parser(
        "doctor",
        parents=[parent],
        help="check the service, its upstreams, the engine and this machine",
        description=(
            "Check what an operator would check by hand, one line each (ok, warn, fail); "
            "exit 1 when a check fails. docs/cli.md says which checks run where."
        ),
    )
    doctor.set_defaults(func=with_client(doctor_command))


# -- through the service ------------------------------------------------------


async def check_health(client: Client) -> Check:
    try:
        async with client.request("GET", "/health", auth=False, expect=None) as resp:
            if resp.status == 200:
                return Check("service", OK, f"healthy at {client.url}")
            return Check("service", FAIL, f"{client.url}/health answered HTTP {resp.status}")
    except ServiceUnreachable as exc:
        return Check("service", FAIL, exc.detail)


async def check_session(client: Client) -> list[Check]:
    pair = client.pair()
    try:
        status = await client.call("GET", "/status")
    except SessionEnded as exc:
        return [Check("session", WARN, exc.detail)]
    except EdgeloaderError as exc:
        return [Check("session", FAIL, f"GET /status: {exc.detail}")]
    if pair is None:
        session = Check("session", WARN, "not logged in (the service allows /status without)")
    else:
        current = client.pair() or pair
        who = current.user or "?"
        session = Check("session", OK, f"logged in as {who}, role {current.role or 'none'}")
    if status.get("authenticated"):
        device = Check("device login", OK, "the device is logged in upstream")
    else:
        device = Check(
            "device login",
            WARN,
            "the device is not logged in upstream: loads and uploads fail until "
            "`edgeloader login --device` (an unlock by an admin logs it in too)",
        )
    return [session, device]


# -- where the service runs ----------------------------------------------------


def locate_service(url: str, own_env: Mapping[str, str] | None = None) -> ServiceSide:
    """Where the service runs and the settings its local checks use: its
    process's environment, else this shell's. A service whose environment
    has no ``RESOURCE_API_URL`` (the one required setting) got its settings
    another way; when this shell has none either, they are unknown."""
    shell = os.environ if own_env is None else own_env
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not local.is_local_host(host):
        return ServiceSide(False, None, None, "the service is not on this machine")
    found = local.process(local.tcp_listeners(port))
    if found is not None and found.env is not None and found.env.get(REQUIRED):
        return ServiceSide(True, found, found.env, f"the environment of pid {found.pid}")
    if found is None:
        why = f"no process listens on port {port} here"
    elif found.env is None:
        why = f"process {found.pid}'s environment is not readable (run as its user or root)"
    else:
        why = f"process {found.pid}'s environment has no {REQUIRED}"
    if shell.get(REQUIRED):
        return ServiceSide(True, found, dict(shell), f"{why}: using this shell's environment")
    return ServiceSide(True, found, None, f"{why}, nor has this shell: its settings are unknown")


def _remote(name: str, side: ServiceSide) -> Check:
    why = "the service is not on this machine" if not side.on_this_machine else "see settings"
    return Check(name, WARN, f"unknown: {why}")


async def check_resource_api(env: Mapping[str, str]) -> Check:
    url = env.get("RESOURCE_API_URL", "").strip()
    if not url:
        return Check("resource api", FAIL, "RESOURCE_API_URL is not set")
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            return Check("resource api", OK, f"{url} answers (HTTP {resp.status})")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check("resource api", FAIL, f"{url} cannot be reached: {_why(exc)}")


def _why(exc: BaseException) -> str:
    return os_reason(exc)


def _engine_session(docker_host: str) -> tuple[aiohttp.ClientSession, str]:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    if docker_host.startswith("unix://"):
        connector = aiohttp.UnixConnector(path=docker_host.removeprefix("unix://"))
        return aiohttp.ClientSession(connector=connector, timeout=timeout), "http://localhost"
    base = docker_host.replace("tcp://", "http://", 1)
    return aiohttp.ClientSession(timeout=timeout), base.rstrip("/")


async def check_engine(env: Mapping[str, str]) -> Check:
    docker_host = env.get("DOCKER_HOST", "").strip()
    configured = bool(docker_host)
    docker_host = docker_host or DEFAULT_DOCKER_HOST
    try:
        http, base = _engine_session(docker_host)
    except (OSError, ValueError) as exc:
        return Check("engine", FAIL, f"DOCKER_HOST {docker_host}: {_why(exc)}")
    try:
        async with http:
            async with http.get(f"{base}/_ping") as resp:
                if resp.status != 200:
                    return Check("engine", FAIL, f"{docker_host}: /_ping answered {resp.status}")
            async with http.get(f"{base}/version") as resp:
                version: dict[str, Any] = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        verdict = FAIL if configured else WARN
        note = "" if configured else " (DOCKER_HOST unset: unlock and functions are off)"
        return Check("engine", verdict, f"{docker_host} cannot be reached: {_why(exc)}{note}")
    components = [str(c.get("Name", "")) for c in version.get("Components") or []]
    kind = "podman" if any("podman" in c.lower() for c in components) else "Docker Engine"
    return Check("engine", OK, f"{kind} {version.get('Version', '?')} answers at {docker_host}")


def check_state_dir(env: Mapping[str, str], owner: int | None) -> Check:
    path = Path(env.get("EDGELOADER_STATE_DIR", "").strip() or Settings.state_dir)
    try:
        info = path.stat()
    except FileNotFoundError:
        return Check(
            "state folder", FAIL, f"{path} does not exist (the service makes it when it starts)"
        )
    except OSError as exc:
        return Check("state folder", FAIL, f"{path}: {exc.strerror}")
    if not stat.S_ISDIR(info.st_mode):
        return Check("state folder", FAIL, f"{path} is not a folder")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return Check(
            "state folder",
            FAIL,
            f"{path} has mode {mode:04o}: others may read the signing key and the auth "
            "database (chmod 700; the service also tightens it when it starts)",
        )
    loose = []
    try:
        for entry in path.iterdir():
            entry_mode = stat.S_IMODE(entry.lstat().st_mode)
            if entry_mode & 0o077:
                loose.append(f"{entry.name} {entry_mode:04o}")
    except OSError:
        pass  # not ours to list: the folder's own mode is what we can judge
    if loose:
        return Check("state folder", FAIL, f"{path}: readable by others: {', '.join(loose)}")
    if owner is not None and info.st_uid != owner:
        return Check(
            "state folder",
            WARN,
            f"{path} (mode {mode:04o}) belongs to uid {info.st_uid}, the service runs as {owner}",
        )
    return Check("state folder", OK, f"{path} exists, mode {mode:04o}, private")


def check_publisher_key(env: Mapping[str, str]) -> Check:
    from edgeloader.services.manifest import load_publisher_key

    value = env.get("EDGELOADER_PUBLISHER_KEY", "").strip()
    if not value:
        return Check(
            "publisher key",
            WARN,
            "not configured: content from the CDN is not authenticated against a forger "
            "(no signed release manifest is checked; set EDGELOADER_PUBLISHER_KEY)",
        )
    try:
        key = load_publisher_key(Path(value))
    except ConfigError as exc:
        return Check("publisher key", FAIL, exc.detail)
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return Check("publisher key", OK, f"{value}: a valid Ed25519 public key (SHA-256 {digest}…)")


def check_aes(proc: Path = local.PROC) -> Check:
    try:
        cpuinfo = (proc / "cpuinfo").read_text(errors="replace")
    except OSError:
        return Check("aes", WARN, "unknown: /proc/cpuinfo cannot be read")
    backend, hardware = local.aes_backend_from_cpuinfo(cpuinfo)
    source = "on this CPU, from /proc/cpuinfo's flags"
    if hardware:
        return Check("aes", OK, f"{backend} {source}")
    return Check("aes", WARN, f"{backend} {source}: decryption will be slow")


def check_mount_namespace(pid: int | None, proc: Path = local.PROC) -> Check:
    """Functions need the service in the host's mount namespace: the engine
    must see the run folders it mounts (docs/functions.md, "Whose mount
    namespace")."""
    name = "mount namespace"
    if pid is None:
        return Check(name, WARN, "unknown: the service's process was not found here")
    try:
        service, host = os.readlink(proc / str(pid) / "ns" / "mnt"), os.readlink(proc / "1/ns/mnt")
    except OSError:
        return Check(name, WARN, "unknown: run doctor as root to compare the namespaces")
    if service == host:
        return Check(name, OK, "the host's: the engine sees the service's run folders")
    return Check(
        name,
        FAIL,
        f"pid {pid} has a mount namespace of its own (systemd's ProtectSystem=, "
        "PrivateTmp=, PrivateMounts= or ReadWritePaths=): the engine cannot see its run "
        "folders, so every invoke is refused; docs/deployment.md says what to change",
    )


def check_swap(proc: Path = local.PROC) -> Check:
    """Run folders and the model store are tmpfs: their pages may be
    swapped out, and swap on a disk would put a model's plaintext there."""
    try:
        lines = (proc / "swaps").read_text().splitlines()[1:]
    except OSError:
        return Check("swap", WARN, "unknown: /proc/swaps cannot be read")
    disks = [line.split()[0] for line in lines if line.strip() and "zram" not in line.split()[0]]
    if not disks:
        return Check("swap", OK, "no swap on a disk (zram or none): tmpfs pages stay in memory")
    return Check(
        "swap",
        WARN,
        f"swap on {', '.join(disks)}: pages of run folders and decrypted models may be "
        "written there; use zram, or no swap (docs/deployment.md)",
    )


def check_engine_tmpdir(env: Mapping[str, str]) -> Check:
    docker_host = env.get("DOCKER_HOST", "").strip() or DEFAULT_DOCKER_HOST
    if docker_host.startswith("unix://"):
        inodes = local.unix_listeners(docker_host.removeprefix("unix://"))
    else:
        port = urlsplit(docker_host.replace("tcp://", "http://", 1)).port
        inodes = local.tcp_listeners(port) if port else set()
    engine = local.process(inodes)
    if engine is None:
        return Check("engine tmpdir", WARN, "unknown: the engine's process is not found here")
    if engine.env is None:
        return Check(
            "engine tmpdir",
            WARN,
            f"unknown: {engine.name} (pid {engine.pid})'s environment is not readable",
        )
    tmpdir = engine.env.get("TMPDIR") or ""
    shown = f"TMPDIR={tmpdir}" if tmpdir else f"TMPDIR unset ({DEFAULT_ENGINE_TMPDIR})"
    mount = local.filesystem_of(tmpdir or DEFAULT_ENGINE_TMPDIR)
    where = f"{engine.name} (pid {engine.pid}): {shown}"
    if mount is None:
        return Check("engine tmpdir", WARN, f"{where}, file system unknown")
    if mount[1] in MEMORY_FILESYSTEMS:
        return Check("engine tmpdir", OK, f"{where} on {mount[1]}")
    return Check(
        "engine tmpdir",
        WARN,
        f"{where} on {mount[1]}: the engine spools each loaded archive there, "
        "decrypted; give it a tmpfs (docs/deployment.md)",
    )


# -- the command ----------------------------------------------------------------


async def run_checks(client: Client) -> list[Check]:
    checks = [await check_health(client)]
    side = await asyncio.to_thread(locate_service, client.url)
    if checks[0].verdict == OK:
        checks += await check_session(client)
    if side.env is None:
        checks.append(Check("settings", WARN, side.source))
    elif side.process is not None and side.process.env is not None:
        checks.append(Check("settings", OK, f"read from {side.process.name}, {side.source}"))
    else:
        checks.append(Check("settings", WARN, side.source))
    if side.env is None:
        checks += [
            _remote(name, side)
            for name in ("resource api", "engine", "state folder", "publisher key")
        ]
    else:
        checks.append(await check_resource_api(side.env))
        checks.append(await check_engine(side.env))
        owner = side.process.uid if side.process else None
        checks.append(check_state_dir(side.env, owner))
        checks.append(check_publisher_key(side.env))
    checks.append(check_aes())
    checks.append(check_swap())
    if side.on_this_machine:
        pid = side.process.pid if side.process else None
        checks.append(await asyncio.to_thread(check_mount_namespace, pid))
    if side.env is None:
        checks.append(_remote("engine tmpdir", side))
    else:
        checks.append(await asyncio.to_thread(check_engine_tmpdir, side.env))
    return checks


async def doctor_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    checks = await run_checks(client)
    failed = [c.check for c in checks if c.verdict == FAIL]
    out.result(
        {"url": client.url, "ok": not failed, "checks": [asdict(c) for c in checks]},
        [c.line() for c in checks],
    )
    if failed:
        raise DoctorFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    return 0
