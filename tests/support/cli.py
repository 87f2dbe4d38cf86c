"""The ``edgeloader`` command run as its own process against a running
service: ``python -m edgeloader ...`` with ``HOME`` and ``XDG_CONFIG_HOME``
in a temporary folder, through pipes or a pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.harness.processes import REPO_ROOT, clean_env
from tests.support.stack import ADMIN

__all__ = ["JSON", "Cli", "Result", "peak_kib", "run_in_pty"]

JSON = dict[str, Any]


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    def json(self) -> Any:
        return json.loads(self.out)

    def one_error_line(self) -> str:
        """The whole of stderr, which must be exactly one ``edgeloader:`` line."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("edgeloader: "), self.err
        assert "Traceback" not in self.err
        return lines[0]


@dataclass
class Cli:
    """``python -m edgeloader`` with its own home and config folder."""

    home: Path
    url: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.home / "config" / "edgeloader"

    @property
    def credentials(self) -> Path:
        return self.config / "credentials.json"

    def env(self) -> dict[str, str]:
        env = clean_env(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / "config"))
        if self.url:
            env["EDGELOADER_URL"] = self.url
        return env | self.extra_env

    async def run(self, *args: str, input: str | None = None, within: float = 180) -> Result:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgeloader",
            *args,
            cwd=REPO_ROOT,
            env=self.env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(
            process.communicate(input.encode() if input is not None else b""), within
        )
        assert process.returncode is not None
        return Result(process.returncode, out, err.decode())

    async def ok(self, *args: str, input: str | None = None) -> Result:
        result = await self.run(*args, input=input)
        assert result.code == 0, (args, result.err, result.out[-2000:])
        return result

    async def login(self, creds: tuple[str, str] = ADMIN, *more: str) -> Result:
        return await self.ok(
            "login", "--email", creds[0], "--password-stdin", *more, input=creds[1]
        )

    def stored(self) -> JSON:
        servers: JSON = json.loads(self.credentials.read_text())["servers"]
        return servers


# Runs the CLI and reports its peak resident size (VmHWM, KiB) on stderr's last line.
_MEASURED = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
    "    print('peak', status.split()[0], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['edgeloader', *sys.argv[1:]]\n"
    "runpy.run_module('edgeloader', run_name='__main__')\n"
)


async def peak_kib(cli: Cli, *args: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MEASURED, *args,
        cwd=REPO_ROOT, env=cli.env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return int(err.decode().splitlines()[-1].split()[1])


def run_in_pty(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Runs the CLI with a pseudo-terminal as stdin, stdout and stderr."""
    main, secondary = pty.openpty()
    # A terminal of 24 rows and 100 columns, as a real one would report.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeloader", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
        )
        os.close(secondary)
        output = bytearray()
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            output += chunk
        code = process.wait(60)
    finally:
        with contextlib.suppress(OSError):
            os.close(main)
    return code, output.decode(errors="replace")
