"""The systemd unit's limits leave the loader what it needs, on each
engine. systemd is not the init here, so the unit cannot be started; its
settings are applied or measured another way, around ``python -m
edgeloader serve`` doing what a box does: proving that the engine sees its
mounts, running a cold function, and serving a warm one over its socket.

- Capabilities: ``setpriv`` (util-linux) starts the loader with only the
  unit's ``CapabilityBoundingSet=`` and ``no_new_privs``, as systemd does
  before ``ExecStart=``.
- System calls: ``strace -f`` records every call the loader and its
  children make, and each must be one the unit's ``SystemCallFilter=``
  allows (its groups expanded by ``systemd-analyze syscall-filter``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edgeloader.storage.mounts import mounted_under
from tests.integration.test_function_warm import HANDLER_SOURCE, build_warm
from tests.support.engines import EngineService
from tests.support.functions import Api, sh
from tests.support.harness.loader import start_loader_process
from tests.support.harness.processes import Child
from tests.support.stack import ADMIN, Stack
from tests.unit.test_box_kit import UNIT, service

#: The devices DevicePolicy=closed leaves a service (systemd.resource-control).
CLOSED_POLICY_DEVICES = {
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts/ptmx",
}
#: Capability numbers (linux/capability.h) of the names the unit keeps.
CAPABILITY_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_SYS_ADMIN": 21}


def unit_launcher() -> tuple[list[str], int]:
    """``setpriv`` with the unit's bounding set and no_new_privs, and the
    effective capability mask the service should end up with."""
    settings = service(UNIT)
    names = settings["CapabilityBoundingSet"][0].split()
    assert settings["NoNewPrivileges"] == ["yes"]
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is not installed"
    keep = ",".join("+" + name.removeprefix("CAP_").lower() for name in names)
    launcher = [setpriv, f"--bounding-set=-all,{keep}", "--inh-caps=-all", "--no-new-privs"]
    return launcher, sum(1 << CAPABILITY_BITS[name] for name in names)


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The warm example's handler, built static."""
    out = tmp_path_factory.mktemp("warm") / "handler"
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(out), str(HANDLER_SOURCE)], check=True, timeout=120
    )
    return out.read_bytes()


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


async def test_functions_run_with_only_the_units_capabilities(
    make_stack: Callable[..., Awaitable[Stack]],
    engine: EngineService,
    image: str,
    handler: bytes,
    tmp_path: Path,
) -> None:
    launcher, mask = unit_launcher()
    stack = await make_stack()
    env = {"DOCKER_HOST": engine.docker_host, "EDGELOADER_AUTH": "required"}
    with contextlib.ExitStack() as cleanup:
        child, url = await start_loader_process(
            stack.api_url, tmp_path / "state", tmp_path, cleanup, launcher=launcher, **env
        )
        assert int(status_field(child.pid, "CapEff"), 16) == mask
        assert int(status_field(child.pid, "CapBnd"), 16) == mask
        assert status_field(child.pid, "NoNewPrivs") == "1"
        await run_functions(Api(stack.http, url), handler)
        child.stop()  # SIGTERM: its mounts go, with the same privileges
        assert child.process.returncode == 0
    assert mounted_under(tmp_path / "state") == []


@functools.cache
def syscalls(name: str) -> frozenset[str]:
    """A system call, or the calls of a ``@group`` as systemd expands it."""
    if not name.startswith("@"):
        return frozenset({name})
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed: run scripts/install-engine.sh as root"
    listing = subprocess.run(
        [analyze, "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    entries = [line.strip() for line in listing.splitlines() if line.startswith("    ")]
    found: frozenset[str] = frozenset()
    for entry in entries:
        if not entry.startswith("#"):
            found |= syscalls(entry)
    return found


def allowed_syscalls() -> frozenset[str]:
    (allow_list,) = service(UNIT)["SystemCallFilter"]
    assert not allow_list.startswith("~")
    found: frozenset[str] = frozenset()
    for name in allow_list.split():
        found |= syscalls(name)
    return found


async def test_functions_run_within_the_units_system_call_filter(
    make_stack: Callable[..., Awaitable[Stack]],
    engine: EngineService,
    image: str,
    handler: bytes,
    tmp_path: Path,
) -> None:
    strace = shutil.which("strace")
    assert strace, "strace is not installed: run scripts/install-engine.sh as root"
    trace = tmp_path / "trace"
    stack = await make_stack()
    env = {"DOCKER_HOST": engine.docker_host, "EDGELOADER_AUTH": "required"}
    with contextlib.ExitStack() as cleanup:
        child, url = await start_loader_process(
            stack.api_url,
            tmp_path / "state",
            tmp_path,
            cleanup,
            launcher=[strace, "-f", "-qq", "-o", str(trace)],
            **env,
        )
        await run_functions(Api(stack.http, url), handler)
        assert stop_traced(child) == 0
    assert mounted_under(tmp_path / "state") == []
    text = read_trace(trace)
    # "PID name(args) = result"; "<... name resumed>" lines repeat a name.
    used = set(re.findall(r"^\d+ +(\w+)\(", text, re.MULTILINE))
    assert {"mount", "umount2", "connect", "chown"} <= used
    assert used <= allowed_syscalls(), sorted(used - allowed_syscalls())

    # What the unit's other seccomp and cgroup settings allow.
    settings = service(UNIT)
    families = set(re.findall(r"\bsocket\((AF_\w+)", text))
    assert {"AF_UNIX", "AF_INET"} <= families
    assert families <= set(settings["RestrictAddressFamilies"][0].split())
    assert settings["RestrictNamespaces"] == ["yes"]
    assert not re.search(r"CLONE_NEW|^\d+ +(unshare|setns)\(", text, re.MULTILINE)
    assert settings["DevicePolicy"] == ["closed"]
    devices = set(
        re.findall(r'^\d+ +open(?:at)?\((?:AT_FDCWD, )?"(/dev/[^"]*)"', text, re.MULTILINE)
    )
    # /dev/shm holds files (POSIX semaphores of multiprocessing), not devices.
    devices = {d for d in devices if not d.startswith("/dev/shm/")}
    assert devices <= CLOSED_POLICY_DEVICES, devices - CLOSED_POLICY_DEVICES


def stop_traced(child: Child) -> int:
    """Stops the loader under ``strace`` and returns strace's exit code.
    The shutdown is traced too: SIGTERM goes to the loader, not to strace,
    which ends when its tracee does."""
    (loader,) = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
    os.kill(int(loader), signal.SIGTERM)
    return child.process.wait(60)


def read_trace(trace: Path) -> str:
    return trace.read_text(errors="replace")


async def run_functions(api: Api, handler: bytes) -> None:
    api.admin = await api.login(ADMIN)

    # A cold run: its folder is mounted, given to uid 65534, written
    # and read back by the loader.
    await api.deploy("cold", command=sh("cat request.json > result.json"))
    run = await api.invoke("cold", {"hello": "box"})
    assert (run["status"], run["result"]) == ("succeeded", {"hello": "box"}), run

    # A warm run: the loader connects to the socket the function's uid owns.
    await build_warm(api, "warm", handler)
    for n in (1, 2):  # the handler counts the invokes it served
        run = await api.invoke("warm")
        assert run["status"] == "succeeded", run
        assert (run["result"]["n"], run["coldStart"]) == (n, n == 1)
