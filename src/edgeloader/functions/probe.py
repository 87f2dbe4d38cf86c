"""Does the engine see the loader's mounts?

A run folder is a tmpfs the loader mounts in its own mount namespace and
the engine binds into the container. When the engine lives in another
namespace (the loader under systemd's ``ProtectSystem=``, ``PrivateTmp=``
or ``ReadWritePaths=``, or in a container without ``rshared`` propagation
of the run root), it silently binds the folder underneath instead: a run
would then write to the box's disk, without a cap. So before the first
run the loader proves it, and refuses functions with one clear error when
it cannot; it never falls back to disk.

The proof: a probe folder whose underlying directory holds one marker and
whose tmpfs holds another; a container is created (never started) from a
tiny image of the loader's own with the folder bound at ``/app/functions``,
and the engine is asked for the marker through the container (the archive
API resolves the container's mounts as the engine sees them). The tmpfs's
marker is the proof. The result is kept; a failure is tried again on the
next run.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import shutil
import tarfile
from pathlib import Path

from edgeloader.errors import NotFound, Unavailable
from edgeloader.storage.mounts import mount_tmpfs, unmount
from edgeloader.upstream.engine import ContainerSpec, Engine

__all__ = ["PROBE_IMAGE", "MountProbe"]

log = logging.getLogger(__name__)

PROBE_IMAGE = "localhost/edgeloader-probe:1"
MARKER = "edgeloader-probe"
_SIZE = 1 << 20
_UID = 65534


class MountProbe:
    def __init__(self, engine: Engine, folder: Path, workdir: str) -> None:
        self.engine = engine
        self.folder = folder  # where the probe mounts its tmpfs
        self.workdir = workdir
        self._proved = False
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        """Returns once proved; :class:`Unavailable` with the reason when
        the engine does not see the loader's mounts."""
        if self._proved:
            return
        async with self._lock:
            if not self._proved:
                await self._prove()
                self._proved = True
                log.info("the engine sees the loader's run folders (a tmpfs)")

    async def _prove(self) -> None:
        await self._probe_image()
        token = secrets.token_hex(16)
        await asyncio.to_thread(self._mount, token)
        try:
            spec = ContainerSpec(
                name=f"edgeloader-probe-{token[:12]}",
                image=PROBE_IMAGE,
                command=("/probe",),
                env={},
                uid=_UID,
                folder=self.folder,
                workdir=self.workdir,
                memory_bytes=16 << 20,
                cpus=0.1,
                pids=8,
                tmpfs_bytes=1 << 20,
                labels={},
            )
            container = await self.engine.create_container(spec)
            try:
                seen = await self.engine.read_file(container, f"{self.workdir}/{MARKER}", 4096)
            finally:
                await self.engine.remove_container(container)
        finally:
            await asyncio.to_thread(self._unmount)
        if seen != token.encode():
            raise Unavailable(
                "functions are off: the container engine does not see the loader's run "
                "folders (it binds the disk folder under the loader's tmpfs): the loader runs "
                "in a mount namespace of its own (systemd's ProtectSystem=, PrivateTmp= or "
                "ReadWritePaths=, or a container without rshared propagation of the run "
                "root). docs/deployment.md says what to change."
            )

    async def _probe_image(self) -> None:
        try:
            await self.engine.inspect_image(PROBE_IMAGE)
        except NotFound:
            await self.engine.import_image(_rootfs(), PROBE_IMAGE)

    def _mount(self, token: str) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(mode=0o700, parents=True)
        # Under the mount: what the engine finds if it does not see it.
        (self.folder / MARKER).write_text("the disk folder")
        mount_tmpfs(self.folder, _SIZE, uid=_UID)
        (self.folder / MARKER).write_text(token)

    def _unmount(self) -> None:
        try:
            unmount(self.folder)
        except OSError as exc:
            log.warning("could not unmount the probe folder %s: %s", self.folder, exc)
        shutil.rmtree(self.folder, ignore_errors=True)


def _rootfs() -> bytes:
    """The probe image: nothing to run, only a file saying what it is."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"edgeloader's mount probe: its containers are created, never started\n"
        info = tarfile.TarInfo("etc/edgeloader-probe")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
