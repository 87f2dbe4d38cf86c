"""The device fingerprint (docs/fingerprint.md).

``CPU: {cpu}. GPU: {gpu}. Memory: {memory}. DriveSerial: {serial}``

The string enters the per-device key derivation, so it must be stable for a
device across restarts and identical however the service is started. It is
collected from py-cpuinfo, ``/proc`` and ``/sys`` only (no shell, no helper
programs) and cached for the process. Each field that cannot be read falls
back to ``unknown``. The exact rules are in ``docs/fingerprint.md``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
_PCI_DISPLAY_CLASS = "0x03"


@dataclass(frozen=True)
class Fingerprint:
    cpu: str
    gpu: str
    memory: str
    drive_serial: str

    def __str__(self) -> str:
        return (
            f"CPU: {self.cpu}. GPU: {self.gpu}. Memory: {self.memory}. "
            f"DriveSerial: {self.drive_serial}"
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _clean(value: str | None) -> str:
    """Collapses white space; an empty value becomes ``unknown``."""
    value = " ".join((value or "").split())
    return value or UNKNOWN


def cpu_brand_from_cpuinfo() -> str | None:
    """The CPU brand string as py-cpuinfo reports it."""
    import cpuinfo

    try:
        info = cpuinfo.get_cpu_info()
    except Exception:  # py-cpuinfo probes several sources and may fail in odd ways
        log.warning("py-cpuinfo failed; falling back to /proc/cpuinfo", exc_info=True)
        return None
    brand = info.get("brand_raw")
    return str(brand) if brand else None


def cpu_from_proc(proc: Path) -> str | None:
    """``model name`` (x86) or ``Model``/``Hardware`` (ARM) from /proc/cpuinfo."""
    text = _read(proc / "cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1)
    return None


def gpu_name(proc: Path, sys: Path) -> str:
    """The first display adapter: NVIDIA's driver report, else the first PCI
    display-class device, else the first DRM card's driver."""
    for info in sorted((proc / "driver/nvidia/gpus").glob("*/information")):
        match = re.search(r"^Model:\s*(.+)$", _read(info) or "", re.MULTILINE)
        if match:
            return _clean(match.group(1))
    for dev in sorted((sys / "bus/pci/devices").glob("*")):
        if (_read(dev / "class") or "").startswith(_PCI_DISPLAY_CLASS):
            vendor = (_read(dev / "vendor") or "").removeprefix("0x")
            device = (_read(dev / "device") or "").removeprefix("0x")
            driver = _driver_name(dev) or "pci"
            return _clean(f"{driver} {vendor}:{device}")
    for card in sorted((sys / "class/drm").glob("card[0-9]*")):
        if "-" in card.name:  # connectors such as card0-HDMI-A-1
            continue
        card_driver = _driver_name(card / "device")
        if card_driver:
            return card_driver
    return UNKNOWN


def _driver_name(device: Path) -> str | None:
    link = device / "driver"
    try:
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None
    except OSError:
        return None


def memory_total(proc: Path) -> str:
    """Total RAM from /proc/meminfo, in whole MiB (``15893 MB``)."""
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read(proc / "meminfo") or "", re.MULTILINE)
    return f"{int(match.group(1)) // 1024} MB" if match else UNKNOWN


def root_disk_serial(proc: Path, sys: Path) -> str:
    """Serial of the disk holding ``/``: the root mount's device number from
    mountinfo, then its whole disk in /sys/dev/block, then that disk's serial."""
    devno = _root_devno(proc)
    if devno is None:
        return UNKNOWN
    node = sys / "dev/block" / devno
    try:
        disk = node.resolve(strict=True)
    except OSError:
        return UNKNOWN
    if (disk / "partition").exists():
        disk = disk.parent
    for candidate in (disk / "serial", disk / "device/serial", disk / "device/vpd_pg80"):
        serial = _read(candidate)
        if serial:
            return _clean("".join(ch for ch in serial if ch.isprintable()))
    return UNKNOWN


def _root_devno(proc: Path) -> str | None:
    for line in (_read(proc / "self/mountinfo") or "").splitlines():
        fields = line.split()
        # mount ID, parent ID, major:minor, root, mount point, ...
        if len(fields) > 4 and fields[4] == "/":
            devno = fields[2]
            return None if devno.startswith("0:") else devno  # 0:N is virtual (overlay, tmpfs)
    return None


def collect(
    proc: Path = Path("/proc"),
    sys: Path = Path("/sys"),
    cpu_brand: Callable[[], str | None] = cpu_brand_from_cpuinfo,
) -> Fingerprint:
    """Reads every field; the paths are parameters so tests can use fake trees."""
    return Fingerprint(
        cpu=_clean(cpu_brand() or cpu_from_proc(proc)),
        gpu=gpu_name(proc, sys),
        memory=memory_total(proc),
        drive_serial=root_disk_serial(proc, sys),
    )


@functools.cache
def fingerprint() -> str:
    """This device's fingerprint, collected once per process."""
    value = str(collect())
    log.info("device fingerprint: %s", value)
    return value
