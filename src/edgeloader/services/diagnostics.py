"""The service's own checks, as ``GET /api/doctor`` answers them and
``edgeloader doctor`` prints them (docs/cli.md, "edgeloader doctor").

Each check reads the settings the service runs with and its live objects
(the engine client, the function service, the model store, the release
gate), and ``/proc`` of the machine it runs on; so they hold for a service
on another box, or one given its settings by a harness, alike. A check
never raises: what goes wrong is its verdict, ``ok``, ``warn`` or
``fail``, and one line of detail.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeloader.config import Settings
from edgeloader.errors import ConfigError, EdgeloaderError, ImageGone
from edgeloader.functions.models import ModelStore
from edgeloader.functions.service import FunctionService
from edgeloader.services import host
from edgeloader.services.manifest import ReleaseGate, load_publisher_key
from edgeloader.storage.mounts import tmpfs_size
from edgeloader.upstream.engine import Engine
from edgeloader.wire import Record

__all__ = ["Check", "Diagnosis", "diagnose"]

Verdict = Literal["ok", "warn", "fail"]
OK: Verdict = "ok"
WARN: Verdict = "warn"
FAIL: Verdict = "fail"
PROBE_TIMEOUT = 5.0
#: podman's spool folder when its TMPDIR is unset.
DEFAULT_ENGINE_TMPDIR = "/var/tmp"  # noqa: S108 - podman's default, only reported
#: aiodocker's socket when DOCKER_HOST is unset.
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
MiB = 1 << 20


class Check(Record):
    """One check: its name, its verdict and what it saw."""

    check: str
    verdict: Verdict
    detail: str


class Diagnosis(Record):
    """The service's checks, in a fixed order."""

    checks: list[Check]


async def diagnose(
    settings: Settings,
    engine: Engine,
    functions: FunctionService,
    gate: ReleaseGate,
    proc: Path = host.PROC,
) -> Diagnosis:
    """Every check of the service, in the order docs/cli.md shows them."""
    engine_check = await engine_answers(engine, settings.docker_host)
    checks = [
        await resource_api(settings.resource_api_url),
        engine_check,
        await asyncio.to_thread(state_folder, settings.state_dir, os.geteuid()),
        await asyncio.to_thread(publisher_key, settings.publisher_key, gate.key),
        await asyncio.to_thread(aes, proc),
        await asyncio.to_thread(swap, proc),
        await asyncio.to_thread(mount_namespace, proc),
    ]
    if engine_check.verdict == OK:
        checks.append(await run_folders(functions.probe.check))
        checks.append(await function_images(functions))
    else:
        checks += [
            Check(check=name, verdict=WARN, detail="unknown: the engine does not answer")
            for name in ("run folders", "function images")
        ]
    checks.append(await asyncio.to_thread(engine_tmpdir, settings.docker_host, proc))
    checks.append(await asyncio.to_thread(model_store, functions.models))
    return Diagnosis(checks=checks)


# -- upstreams --------------------------------------------------------------------


async def resource_api(url: str) -> Check:
    """Any HTTP answer within the timeout is an answer: the API's root
    needs no route of its own."""
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            return Check(
                check="resource api", verdict=OK, detail=f"{url} answers (HTTP {resp.status})"
            )
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(
            check="resource api", verdict=FAIL, detail=f"{url} cannot be reached: {_why(exc)}"
        )


async def engine_answers(engine: Engine, docker_host: str | None) -> Check:
    """Asks the engine afresh (its name is cached, its liveness is not)."""
    where = docker_host or f"{DEFAULT_DOCKER_HOST} (DOCKER_HOST unset)"
    try:
        with engine.api.mapped("engine info"):
            await engine.api.docker.system.info()
        kind = await engine.describe()
    except EdgeloaderError as exc:
        if docker_host:
            return Check(check="engine", verdict=FAIL, detail=f"{where}: {exc.detail}")
        return Check(
            check="engine",
            verdict=WARN,
            detail=f"{where}: {exc.detail} (unlock and functions are off without an engine)",
        )
    return Check(check="engine", verdict=OK, detail=f"{kind} answers at {where}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {PROBE_TIMEOUT:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.strerror:
        return exc.os_error.strerror
    return str(exc) or type(exc).__name__


# -- the service's own files ---------------------------------------------------------


def state_folder(path: Path, owner: int) -> Check:
    """The folder of the signing key and the auth database: the service's
    user's alone, and nothing inside readable by others."""
    name = "state folder"
    try:
        info = path.stat()
    except OSError as exc:
        return Check(check=name, verdict=FAIL, detail=f"{path}: {exc.strerror}")
    if not stat.S_ISDIR(info.st_mode):
        return Check(check=name, verdict=FAIL, detail=f"{path} is not a folder")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return Check(
            check=name,
            verdict=FAIL,
            detail=f"{path} has mode {mode:04o}: others may read the signing key and the "
            "auth database (chmod 700; the service also tightens it when it starts)",
        )
    loose = []
    try:
        for entry in sorted(path.iterdir()):
            entry_mode = stat.S_IMODE(entry.lstat().st_mode)
            if entry_mode & 0o077 and not entry.is_symlink():
                loose.append(f"{entry.name} {entry_mode:04o}")
    except OSError as exc:
        return Check(check=name, verdict=WARN, detail=f"{path} cannot be listed: {exc.strerror}")
    if loose:
        return Check(
            check=name, verdict=FAIL, detail=f"{path}: readable by others: {', '.join(loose)}"
        )
    if info.st_uid != owner:
        return Check(
            check=name,
            verdict=WARN,
            detail=f"{path} (mode {mode:04o}) belongs to uid {info.st_uid}, "
            f"the service runs as {owner}",
        )
    return Check(check=name, verdict=OK, detail=f"{path} exists, mode {mode:04o}, private")


def publisher_key(path: Path | None, loaded: Ed25519PublicKey | None) -> Check:
    """The key the service checks releases with, and whether its file
    still holds it (a restart reads the file again)."""
    name = "publisher key"
    if path is None:
        return Check(
            check=name,
            verdict=WARN,
            detail="not configured: content from the CDN is not authenticated against a "
            "forger (no signed release manifest is checked; set EDGELOADER_PUBLISHER_KEY)",
        )
    try:
        key = load_publisher_key(path)
    except ConfigError as exc:
        return Check(
            check=name, verdict=FAIL, detail=f"{exc.detail} (the service will not start again)"
        )
    raw = _raw(key)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if loaded is not None and _raw(loaded) != raw:
        return Check(
            check=name,
            verdict=WARN,
            detail=f"{path} holds another key (SHA-256 {digest}…) than the one the service "
            "checks with: a restart makes it the one",
        )
    return Check(
        check=name, verdict=OK, detail=f"{path}: a valid Ed25519 public key (SHA-256 {digest}…)"
    )


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


# -- the machine -------------------------------------------------------------------


def aes(proc: Path = host.PROC) -> Check:
    """The AES backend the core's ``aes`` crate picks on the service's CPU
    (the core does not report it; the crate decides from the CPU's flags)."""
    try:
        cpuinfo = (proc / "cpuinfo").read_text(errors="replace")
    except OSError:
        return Check(check="aes", verdict=WARN, detail="unknown: /proc/cpuinfo cannot be read")
    backend, hardware = host.aes_backend_from_cpuinfo(cpuinfo)
    source = "on the service's CPU, from /proc/cpuinfo's flags"
    if hardware:
        return Check(check="aes", verdict=OK, detail=f"{backend} {source}")
    return Check(check="aes", verdict=WARN, detail=f"{backend} {source}: decryption will be slow")


def swap(proc: Path = host.PROC) -> Check:
    """Run folders and the model store are tmpfs: their pages may be
    swapped out, and swap on a disk would put a model's plaintext there."""
    try:
        lines = (proc / "swaps").read_text().splitlines()[1:]
    except OSError:
        return Check(check="swap", verdict=WARN, detail="unknown: /proc/swaps cannot be read")
    disks = [line.split()[0] for line in lines if line.strip() and "zram" not in line.split()[0]]
    if not disks:
        return Check(
            check="swap",
            verdict=OK,
            detail="no swap on a disk (zram or none): tmpfs pages stay in memory",
        )
    return Check(
        check="swap",
        verdict=WARN,
        detail=f"swap on {', '.join(disks)}: pages of run folders and decrypted models may be "
        "written there; use zram, or no swap (docs/deployment.md)",
    )


def mount_namespace(proc: Path = host.PROC) -> Check:
    """Functions need the service in the host's mount namespace: the engine
    must see the run folders it mounts (docs/functions.md, "Whose mount
    namespace")."""
    name = "mount namespace"
    try:
        own, first = os.readlink(proc / "self/ns/mnt"), os.readlink(proc / "1/ns/mnt")
    except OSError:
        return Check(
            check=name,
            verdict=WARN,
            detail="unknown: the service may not read PID 1's namespace (it runs as root on a box)",
        )
    if own == first:
        return Check(
            check=name, verdict=OK, detail="PID 1's: the engine sees the service's run folders"
        )
    return Check(
        check=name,
        verdict=FAIL,
        detail="the service has a mount namespace of its own (systemd's ProtectSystem=, "
        "PrivateTmp=, PrivateMounts= or ReadWritePaths=): the engine cannot see its run "
        "folders, so every invoke is refused; docs/deployment.md says what to change",
    )


async def run_folders(prove: Callable[[], Awaitable[None]]) -> Check:
    """The start-up probe, the proof that the engine sees the service's
    mounts; it is kept once it passes, so this asks the engine at most
    until then."""
    try:
        await prove()
    except EdgeloaderError as exc:
        return Check(check="run folders", verdict=FAIL, detail=exc.detail)
    return Check(
        check="run folders",
        verdict=OK,
        detail="the engine sees the service's tmpfs run folders (the probe passed)",
    )


def engine_tmpdir(docker_host: str | None, proc: Path = host.PROC) -> Check:
    """Where the engine spools a loaded archive, decrypted: its TMPDIR,
    read from its process on this machine."""
    name = "engine tmpdir"
    socket = docker_host or DEFAULT_DOCKER_HOST
    if socket.startswith("unix://"):
        inodes = host.unix_listeners(socket.removeprefix("unix://"), proc)
    else:
        port = urlsplit(socket.replace("tcp://", "http://", 1)).port
        inodes = host.tcp_listeners(port, proc) if port else set()
    engine = host.process(inodes, proc)
    if engine is None:
        return Check(
            check=name,
            verdict=WARN,
            detail=f"unknown: no process of this machine listens at {socket}",
        )
    if engine.env is None:
        return Check(
            check=name,
            verdict=WARN,
            detail=f"unknown: {engine.name} (pid {engine.pid})'s environment is not readable "
            "by the service's user",
        )
    tmpdir = engine.env.get("TMPDIR") or ""
    shown = f"TMPDIR={tmpdir}" if tmpdir else f"TMPDIR unset ({DEFAULT_ENGINE_TMPDIR})"
    mount = host.filesystem_of(tmpdir or DEFAULT_ENGINE_TMPDIR, proc)
    where = f"{engine.name} (pid {engine.pid}): {shown}"
    if mount is None:
        return Check(check=name, verdict=WARN, detail=f"{where}, file system unknown")
    if mount[1] in MEMORY_FILESYSTEMS:
        return Check(check=name, verdict=OK, detail=f"{where} on {mount[1]}")
    return Check(
        check=name,
        verdict=WARN,
        detail=f"{where} on {mount[1]}: the engine spools each loaded archive there, "
        "decrypted; give it a tmpfs (docs/deployment.md)",
    )


# -- functions -----------------------------------------------------------------------


async def function_images(functions: FunctionService) -> Check:
    """Functions pinned to an image the engine no longer has (a reset
    engine, a prune): asked the way an invoke asks, so each one listed here
    is one whose invokes fail."""
    name = "function images"
    deployed = await functions.all()
    gone = []
    try:
        for function in deployed:
            try:
                await functions.runner.image_volumes(function)
            except ImageGone:
                gone.append(f"{function.name} v{function.version}")
    except EdgeloaderError as exc:
        return Check(check=name, verdict=WARN, detail=f"unknown: {exc.detail}")
    if gone:
        return Check(
            check=name,
            verdict=FAIL,
            detail=f"image gone from the engine: {', '.join(gone)}: "
            "invokes fail until each is redeployed or unlock runs again",
        )
    count = len(deployed)
    if count == 0:
        return Check(check=name, verdict=OK, detail="no function is deployed")
    noun = "function" if count == 1 else "functions"
    return Check(check=name, verdict=OK, detail=f"{count} {noun}, every image in the engine")


def model_store(store: ModelStore) -> Check:
    """The decrypted models runs mount: a tmpfs charged to the service's
    own memory, up to EDGELOADER_MODEL_MEMORY_MAX (DESIGN §8.2)."""
    name = "model store"
    use = (
        f"{_mib(store.used)} of {_mib(store.budget)} in use "
        f"(EDGELOADER_MODEL_MEMORY_MAX), {store.fills} decrypted since start"
    )
    if tmpfs_size(store.root) is None:
        return Check(
            check=name,
            verdict=WARN,
            detail=f"{store.root} is not mounted: runs that mount models fail "
            "(the service's log says why; mounting needs root); " + use,
        )
    return Check(check=name, verdict=OK, detail=f"a tmpfs at {store.root}: {use}")


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB" if size % MiB else f"{size // MiB} MiB"
