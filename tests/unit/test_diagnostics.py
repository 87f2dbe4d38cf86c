"""The service's checks (``services/diagnostics.py``) on fake ``/proc``
trees, real folders, a real tmpfs and real HTTP servers; the ones that need
the engine and functions run in tests/integration/test_doctor.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeloader.functions.models import ModelStore
from edgeloader.services import diagnostics, host
from edgeloader.services.diagnostics import FAIL, OK, WARN, Check, Diagnosis
from edgeloader.services.load import LoadService
from tests.support.harness.net import dead_url, serve

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)
UNIX_HEADER = "Num       RefCount Protocol Flags    Type St Inode Path\n"
PODMAN = "unix:///run/podman/podman.sock"


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
    name, is_hardware = host.aes_backend_from_cpuinfo(cpuinfo, machine)
    assert name.startswith(backend)
    assert is_hardware is hardware


def test_the_aes_check_reads_the_cpu_flags(tmp_path: Path) -> None:
    assert diagnostics.aes(tmp_path).verdict == WARN  # no cpuinfo
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu\n")
    if host.aes_backend_from_cpuinfo("flags : aes vaes")[1]:  # an x86 or ARM machine
        slow = diagnostics.aes(tmp_path)
        assert slow.verdict == WARN
        assert "decryption will be slow" in slow.detail


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
        (400, "dockerd", 4242, b"PATH=/bin\0EMPTY=\0"),
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
    assert host.tcp_listeners(8080, proc) == {4242}  # not the connected one
    assert host.tcp_listeners(8081, proc) == {4343}
    assert host.tcp_listeners(9, proc) == set()
    assert host.unix_listeners("/run/podman/podman.sock", proc) == {7777}
    dockerd = host.process({4242}, proc)
    assert dockerd is not None
    assert (dockerd.pid, dockerd.name, dockerd.uid) == (400, "dockerd", 1000)
    assert dockerd.env == {"PATH": "/bin", "EMPTY": ""}
    # A socket activator (systemd) also holds the engine's socket: the engine is taken.
    engine = host.process({7777}, proc)
    assert engine is not None
    assert (engine.pid, engine.name) == (300, "podman")
    assert host.process(set(), proc) is None
    assert host.process({1}, proc) is None


def test_the_file_system_of_a_path(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    assert host.filesystem_of("/run/engine-tmp/x", proc) == ("/run/engine-tmp", "tmpfs")
    assert host.filesystem_of("/run", proc) == ("/run", "tmpfs")
    assert host.filesystem_of("/runaway", proc) == ("/", "ext4")
    assert host.filesystem_of("/mnt/with space/a", proc) == ("/mnt/with space", "xfs")


def test_the_engine_tmpdir_verdicts(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    podman = diagnostics.engine_tmpdir(PODMAN, proc)
    assert (podman.verdict, podman.detail) == (
        OK,
        "podman (pid 300): TMPDIR=/run/engine-tmp on tmpfs",
    )
    # Over TCP, with TMPDIR unset: podman's /var/tmp, on the root's ext4.
    dockerd = diagnostics.engine_tmpdir("tcp://127.0.0.1:8080", proc)
    assert dockerd.verdict == WARN
    assert dockerd.detail.startswith("dockerd (pid 400): TMPDIR unset (/var/tmp) on ext4")
    nobody = diagnostics.engine_tmpdir("unix:///run/docker.sock", proc)
    assert (nobody.verdict, nobody.detail) == (
        WARN,
        "unknown: no process of this machine listens at unix:///run/docker.sock",
    )
    (proc / "300" / "environ").unlink()
    hidden = diagnostics.engine_tmpdir(PODMAN, proc)
    assert hidden.verdict == WARN
    assert "environment is not readable" in hidden.detail


def test_the_state_folder_verdicts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    me = os.geteuid()
    assert diagnostics.state_folder(state, me).verdict == FAIL  # missing
    state.mkdir(mode=0o700)
    state.chmod(0o700)
    (state / "auth.sqlite3").write_bytes(b"")
    (state / "auth.sqlite3").chmod(0o600)
    check = diagnostics.state_folder(state, me)
    assert (check.verdict, check.detail) == (OK, f"{state} exists, mode 0700, private")
    assert diagnostics.state_folder(state, me + 1).verdict == WARN
    (state / "auth.sqlite3").chmod(0o644)
    check = diagnostics.state_folder(state, me)
    assert check.verdict == FAIL
    assert "auth.sqlite3 0644" in check.detail
    state.chmod(0o750)
    assert "mode 0750" in diagnostics.state_folder(state, me).detail


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def test_the_publisher_key_verdicts(tmp_path: Path) -> None:
    assert diagnostics.publisher_key(None, None).verdict == WARN
    path = tmp_path / "key.pem"
    private = Ed25519PrivateKey.generate()
    path.write_bytes(pem(private))
    check = diagnostics.publisher_key(path, private.public_key())
    assert check.verdict == OK
    assert "a valid Ed25519 public key" in check.detail
    # The file now holds another key than the one the service checks with.
    path.write_bytes(pem(Ed25519PrivateKey.generate()))
    changed = diagnostics.publisher_key(path, private.public_key())
    assert changed.verdict == WARN
    assert "a restart makes it the one" in changed.detail
    path.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    broken = diagnostics.publisher_key(path, private.public_key())
    assert broken.verdict == FAIL
    assert broken.detail.endswith("(the service will not start again)")
    assert diagnostics.publisher_key(tmp_path / "absent.pem", None).verdict == FAIL


def test_the_mount_namespace_verdicts(tmp_path: Path) -> None:
    def proc_with(own: str) -> Path:
        proc = tmp_path / own.strip("mnt:[]")
        for entry, namespace in (("1", "mnt:[4026531841]"), ("self", own)):
            (proc / entry / "ns").mkdir(parents=True)
            (proc / entry / "ns" / "mnt").symlink_to(namespace)
        return proc

    assert diagnostics.mount_namespace(proc_with("mnt:[4026531841]")).verdict == OK
    private = diagnostics.mount_namespace(proc_with("mnt:[99]"))
    assert private.verdict == FAIL
    assert "ProtectSystem=" in private.detail
    assert diagnostics.mount_namespace(tmp_path / "nothing").verdict == WARN


def test_swap_on_a_disk_is_a_warning(tmp_path: Path) -> None:
    header = "Filename\tType\tSize\tUsed\tPriority\n"
    (tmp_path / "swaps").write_text(header + "/dev/zram0 partition 1000 0 100\n")
    assert diagnostics.swap(tmp_path).verdict == OK
    (tmp_path / "swaps").write_text(header + "/swapfile file 1000 0 -2\n")
    on_disk = diagnostics.swap(tmp_path)
    assert on_disk.verdict == WARN
    assert "/swapfile" in on_disk.detail


def test_the_model_store_shows_its_use_once_mounted(tmp_path: Path) -> None:
    # The store is never filled here: its source is never asked.
    source: LoadService = None  # type: ignore[assignment]
    store = ModelStore(tmp_path / "models", 8 << 20, source)
    unmounted = diagnostics.model_store(store)
    assert unmounted.verdict == WARN
    assert unmounted.detail.startswith(f"{store.root} is not mounted")
    store.open()  # a real tmpfs (the tests run as root, as the service does)
    try:
        check = diagnostics.model_store(store)
        assert (check.verdict, check.detail) == (
            OK,
            f"a tmpfs at {store.root}: 0 MiB of 8 MiB in use "
            "(EDGELOADER_MODEL_MEMORY_MAX), 0 decrypted since start",
        )
    finally:
        store.close()


async def test_the_resource_api_is_up_when_it_answers_anything() -> None:
    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418)

    app = web.Application()
    app.router.add_get("/", teapot)
    runner, url = await serve(app)
    try:
        check = await diagnostics.resource_api(url + "/")
        assert (check.verdict, check.detail) == (OK, f"{url}/ answers (HTTP 418)")
    finally:
        await runner.cleanup()
    down = await diagnostics.resource_api(dead_url())
    assert down.verdict == FAIL
    assert "cannot be reached" in down.detail


def test_the_answer_is_a_list_of_checks_by_their_wire_names() -> None:
    diagnosis = Diagnosis(checks=[Check(check="swap", verdict=OK, detail="none")])
    assert diagnosis.wire() == {"checks": [{"check": "swap", "verdict": "ok", "detail": "none"}]}
    with pytest.raises(ValueError, match="verdict"):
        Check.model_validate({"check": "swap", "verdict": "fine", "detail": ""})
