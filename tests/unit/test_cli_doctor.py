"""``edgeloader doctor``'s local checks on fake ``/proc`` trees and folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeloader.cli import local
from edgeloader.cli.commands.doctor import (
    FAIL,
    OK,
    WARN,
    check_mount_namespace,
    check_publisher_key,
    check_state_dir,
    check_swap,
    locate_service,
)
from tests.support.harness.net import dead_url

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)
UNIX_HEADER = "Num       RefCount Protocol Flags    Type St Inode Path\n"


@pytest.mark.parametrize(
    ("machine", "flags", "backend", "hardware"),
    [
        ("x86_64", "fpu sse2 aes avx2 avx512f vaes", "VAES-512", True),
        ("x86_64", "fpu sse2 aes avx2 vaes", "VAES-256", True),
        ("x86_64", "fpu sse2 aes avx2", "AES-NI", True),
        ("x86_64", "fpu sse2", "software", False),
        ("aarch64", "fp asimd aes pmull sha1 sha2", "ARMv8 AES", True),
        ("aarch64", "fp asimd", "software", False),
    ],
)
def test_the_aes_backend_from_cpu_flags(
    machine: str, flags: str, backend: str, hardware: bool
) -> None:
    key = "flags" if machine == "x86_64" else "Features"
    cpuinfo = f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n"
    name, is_hardware = local.aes_backend_from_cpuinfo(cpuinfo, machine)
    assert name.startswith(backend)
    assert is_hardware is hardware


def fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(
        TCP_HEADER + "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "     0        0 4242 1 0000000000000000 100 0 0 10 0\n"
        + "   1: 0100007F:1F90 0100007F:B497 01 00000000:00000000 00:00000000 00000000"
        "     0        0 5151 1 0000000000000000 100 0 0 10 0\n"
    )
    (proc / "net" / "tcp6").write_text(
        TCP_HEADER
        + "   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000"
        " 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n"
    )
    (proc / "net" / "unix").write_text(
        UNIX_HEADER
        + "0000000000000000: 00000002 00000000 00010000 0001 01 7777 /run/podman/podman.sock\n"
        + "0000000000000000: 00000003 00000000 00000000 0001 03 7778 /run/podman/podman.sock\n"
    )
    for pid, name, inode, env in (
        (1, "systemd", 7777, b"PATH=/bin\0"),
        (300, "podman", 7777, b"TMPDIR=/run/engine-tmp\0PATH=/bin\0"),
        (400, "python3", 4242, b"RESOURCE_API_URL=http://api\0EMPTY=\0"),
        (500, "other", 9999, b""),
    ):
        base = proc / str(pid)
        (base / "fd").mkdir(parents=True)
        os.symlink(f"socket:[{inode}]", base / "fd" / "3")
        os.symlink("/dev/null", base / "fd" / "0")
        (base / "comm").write_text(f"{name}\n")
        (base / "status").write_text(f"Name:\t{name}\nUid:\t1000\t1000\t1000\t1000\n")
        (base / "environ").write_bytes(env)
    (proc / "self").mkdir()
    (proc / "self" / "mountinfo").write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "23 22 0:30 / /run rw,nosuid - tmpfs tmpfs rw\n"
        "24 23 0:31 / /run/engine-tmp rw - tmpfs tmpfs rw\n"
        "25 22 0:32 / /mnt/with\\040space rw - xfs /dev/sdb rw\n"
    )
    return proc


def test_listeners_and_their_processes(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    assert local.tcp_listeners(8080, proc) == {4242}  # not the connected one
    assert local.tcp_listeners(8081, proc) == {4343}
    assert local.tcp_listeners(9, proc) == set()
    assert local.unix_listeners("/run/podman/podman.sock", proc) == {7777}
    loader = local.process({4242}, proc)
    assert loader is not None
    assert (loader.pid, loader.name, loader.uid) == (400, "python3", 1000)
    assert loader.env == {"RESOURCE_API_URL": "http://api", "EMPTY": ""}
    # A socket activator (systemd) also holds the engine's socket: the engine is taken.
    engine = local.process({7777}, proc)
    assert engine is not None
    assert (engine.pid, engine.name) == (300, "podman")
    assert local.process(set(), proc) is None
    assert local.process({1}, proc) is None


def test_the_file_system_of_a_path(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    assert local.filesystem_of("/run/engine-tmp/x", proc) == ("/run/engine-tmp", "tmpfs")
    assert local.filesystem_of("/run", proc) == ("/run", "tmpfs")
    assert local.filesystem_of("/runaway", proc) == ("/", "ext4")
    assert local.filesystem_of("/mnt/with space/a", proc) == ("/mnt/with space", "xfs")


def test_the_state_folder_verdicts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"EDGELOADER_STATE_DIR": str(state)}
    assert check_state_dir(env, None).verdict == "fail"
    state.mkdir(mode=0o700)
    state.chmod(0o700)
    (state / "auth.sqlite3").write_bytes(b"")
    (state / "auth.sqlite3").chmod(0o600)
    check = check_state_dir(env, os.getuid())
    assert (check.verdict, check.detail) == ("ok", f"{state} exists, mode 0700, private")
    assert check_state_dir(env, os.getuid() + 1).verdict == "warn"
    (state / "auth.sqlite3").chmod(0o644)
    check = check_state_dir(env, None)
    assert check.verdict == "fail"
    assert "auth.sqlite3 0644" in check.detail
    state.chmod(0o750)
    assert "mode 0750" in check_state_dir(env, None).detail


def test_the_publisher_key_verdicts(tmp_path: Path) -> None:
    assert check_publisher_key({}).verdict == "warn"
    key = tmp_path / "key.pem"
    public = Ed25519PrivateKey.generate().public_key()
    key.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    check = check_publisher_key({"EDGELOADER_PUBLISHER_KEY": str(key)})
    assert check.verdict == "ok"
    assert "valid Ed25519 public key" in check.detail
    key.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    assert check_publisher_key({"EDGELOADER_PUBLISHER_KEY": str(key)}).verdict == "fail"
    missing = check_publisher_key({"EDGELOADER_PUBLISHER_KEY": str(tmp_path / "absent.pem")})
    assert missing.verdict == "fail"


def test_a_service_elsewhere_is_not_looked_for_here() -> None:
    side = locate_service("http://192.0.2.10:8080")  # TEST-NET-1: never this machine
    assert side.env is None
    assert side.process is None
    assert local.is_local_host("127.0.0.1")
    assert local.is_local_host("localhost")
    assert not local.is_local_host("192.0.2.10")


def test_settings_come_from_this_shell_only_when_it_has_them() -> None:
    url = dead_url()  # this machine, but nothing listens there
    side = locate_service(url, own_env={"RESOURCE_API_URL": "http://api", "HOME": "/h"})
    assert side.on_this_machine
    assert side.env == {"RESOURCE_API_URL": "http://api", "HOME": "/h"}
    assert side.source.endswith("here: using this shell's environment")
    side = locate_service(url, own_env={"HOME": "/h"})
    assert side.env is None
    assert side.source.endswith("nor has this shell: its settings are unknown")


def test_the_mount_namespace_verdicts(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    namespaces = (("1", "mnt:[4026531841]"), ("42", "mnt:[4026531841]"), ("43", "mnt:[99]"))
    for pid, namespace in namespaces:
        (proc / pid / "ns").mkdir(parents=True)
        (proc / pid / "ns" / "mnt").symlink_to(namespace)
    assert check_mount_namespace(42, proc).verdict == OK
    private = check_mount_namespace(43, proc)
    assert private.verdict == FAIL
    assert "ProtectSystem=" in private.detail
    assert check_mount_namespace(None, proc).verdict == WARN


def test_swap_on_a_disk_is_a_warning(tmp_path: Path) -> None:
    header = "Filename\tType\tSize\tUsed\tPriority\n"
    (tmp_path / "swaps").write_text(header + "/dev/zram0 partition 1000 0 100\n")
    assert check_swap(tmp_path).verdict == OK
    (tmp_path / "swaps").write_text(header + "/swapfile file 1000 0 -2\n")
    on_disk = check_swap(tmp_path)
    assert on_disk.verdict == WARN
    assert "/swapfile" in on_disk.detail
