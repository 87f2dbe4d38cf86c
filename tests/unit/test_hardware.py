"""The device fingerprint against fake /proc and /sys trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeloader import hardware


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    write(proc / "cpuinfo", "processor\t: 0\nmodel name\t: Fake CPU @ 2.00GHz\n")
    write(proc / "meminfo", "MemTotal:       16303428 kB\nMemFree: 1 kB\n")
    write(
        proc / "self/mountinfo",
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "28 1 259:2 / / rw,relatime - ext4 /dev/nvme0n1p2 rw\n",
    )
    disk = sys / "devices/pci0000:00/nvme/nvme0/nvme0n1"
    write(disk / "nvme0n1p2/partition", "2\n")
    write(disk / "device/serial", "  S4EWNX0R123456  \n")
    (sys / "dev/block").mkdir(parents=True)
    os.symlink(disk / "nvme0n1p2", sys / "dev/block/259:2")
    gpu = sys / "bus/pci/devices/0000:01:00.0"
    write(gpu / "class", "0x030000\n")
    write(gpu / "vendor", "0x10de\n")
    write(gpu / "device", "0x2204\n")
    os.symlink("../../../bus/pci/drivers/nouveau", gpu / "driver")
    write(sys / "bus/pci/devices/0000:00:02.0/class", "0x060400\n")
    return proc, sys


def no_cpuinfo() -> str | None:
    return None


def test_full_fingerprint(trees: tuple[Path, Path]) -> None:
    proc, sys = trees
    fp = hardware.collect(proc, sys, cpu_brand=lambda: "Brand From cpuinfo")
    assert str(fp) == (
        "CPU: Brand From cpuinfo. GPU: nouveau 10de:2204. Memory: 15921 MB. "
        "DriveSerial: S4EWNX0R123456"
    )


def test_cpu_falls_back_to_proc_cpuinfo(trees: tuple[Path, Path]) -> None:
    proc, sys = trees
    assert hardware.collect(proc, sys, no_cpuinfo).cpu == "Fake CPU @ 2.00GHz"


def test_arm_cpuinfo_model_line(tmp_path: Path) -> None:
    write(tmp_path / "cpuinfo", "processor\t: 0\nBogoMIPS\t: 62.50\nModel\t: NVIDIA Orin\n")
    assert hardware.cpu_from_proc(tmp_path) == "NVIDIA Orin"


def test_nvidia_driver_report_wins(trees: tuple[Path, Path]) -> None:
    proc, sys = trees
    write(proc / "driver/nvidia/gpus/0000:01:00.0/information", "Model: \t NVIDIA RTX A2000\n")
    assert hardware.gpu_name(proc, sys) == "NVIDIA RTX A2000"


def test_drm_card_without_pci(tmp_path: Path) -> None:
    card = tmp_path / "sys/class/drm/card0"
    (card / "device").mkdir(parents=True)
    (tmp_path / "sys/class/drm/card0-HDMI-A-1").mkdir()
    os.symlink("/sys/bus/platform/drivers/tegra-drm", card / "device/driver")
    assert hardware.gpu_name(tmp_path / "proc", tmp_path / "sys") == "tegra-drm"


def test_virtio_disk_serial_on_the_whole_disk(tmp_path: Path) -> None:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    write(proc / "self/mountinfo", "28 1 254:0 / / rw - ext4 /dev/vda rw\n")
    disk = sys / "devices/virtio1/block/vda"
    write(disk / "serial", "VIRTIO-SERIAL\n")
    (sys / "dev/block").mkdir(parents=True)
    os.symlink(disk, sys / "dev/block/254:0")
    assert hardware.root_disk_serial(proc, sys) == "VIRTIO-SERIAL"


def test_every_field_has_a_stable_fallback(tmp_path: Path) -> None:
    fp = hardware.collect(tmp_path / "proc", tmp_path / "sys", no_cpuinfo)
    assert str(fp) == "CPU: unknown. GPU: unknown. Memory: unknown. DriveSerial: unknown"


def test_overlay_root_has_no_disk_serial(tmp_path: Path) -> None:
    write(tmp_path / "self/mountinfo", "500 400 0:77 / / rw - overlay overlay rw\n")
    assert hardware.root_disk_serial(tmp_path, tmp_path / "sys") == "unknown"


def test_real_fingerprint_is_cached_and_well_formed() -> None:
    first = hardware.fingerprint()
    assert first is hardware.fingerprint()
    assert first.startswith("CPU: ")
    assert ". DriveSerial: " in first
