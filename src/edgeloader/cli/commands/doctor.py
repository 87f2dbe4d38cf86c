"""``edgeloader doctor``: what an operator would otherwise check by hand,
one line each, ``ok``, ``warn`` or ``fail``; exit 1 when one fails.

Where each check runs (docs/cli.md):

- here, about this client and its way to the service: ``service``
  (``/health``), ``session`` (the stored token, ``/status``) and ``device
  login`` (``/status``'s ``authenticated``);
- in the service, whichever machine it runs on: every other check, as
  ``GET /api/doctor`` answers them (``services/diagnostics.py``), with the
  settings the service runs with. That route is for admins: another role
  gets one line saying so, and the client-side checks still print.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from edgeloader.cli.client import ApiError, Client, ServiceUnreachable, SessionEnded
from edgeloader.cli.commands.common import Subcommands, with_client
from edgeloader.cli.output import Console
from edgeloader.errors import EdgeloaderError

__all__ = ["Check", "add_doctor_command"]

OK, WARN, FAIL = "ok", "warn", "fail"
ADMIN_ONLY = "service checks"
NEEDS_ADMIN = (
    "doctor's service checks need an admin login (Admin or ApiAdmin): run `edgeloader "
    "login` as one to see the engine, the state folder, the keys, the functions and the "
    "service's machine"
)


class DoctorFailed(EdgeloaderError):
    """A check failed."""


@dataclass(frozen=True)
class Check:
    check: str
    verdict: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<4}  {self.check:<15}  {self.detail}"


def add_doctor_command(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    doctor = commands.add_parser(
        "doctor",
        parents=[parent],
        help="check the service, its upstreams, the engine and its machine",
        description=(
            "Check what an operator would check by hand, one line each (ok, warn, fail); "
            "exit 1 when a check fails. The service's own checks need an admin login; "
            "docs/cli.md says what each check looks at."
        ),
    )
    doctor.set_defaults(func=with_client(doctor_command))


# -- here ---------------------------------------------------------------------


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


# -- in the service ---------------------------------------------------------------


async def service_checks(client: Client) -> list[Check]:
    """The service's own checks (``GET /api/doctor``), or one line saying
    why they are not shown."""
    if client.pair() is None:
        return [Check(ADMIN_ONLY, WARN, f"not logged in: {NEEDS_ADMIN}")]
    try:
        answer = await client.call("GET", "/api/doctor")
    except SessionEnded as exc:
        return [Check(ADMIN_ONLY, WARN, f"{exc.detail}; {NEEDS_ADMIN}")]
    except ApiError as exc:
        if exc.status == 403:
            current = client.pair()
            role = current.role if current is not None and current.role else "none"
            return [Check(ADMIN_ONLY, WARN, f"role {role}: {NEEDS_ADMIN}")]
        return [Check(ADMIN_ONLY, FAIL, f"GET /api/doctor: {exc.detail}")]
    except EdgeloaderError as exc:
        return [Check(ADMIN_ONLY, FAIL, f"GET /api/doctor: {exc.detail}")]
    checks = answer.get("checks") if isinstance(answer, dict) else None
    if not isinstance(checks, list):
        return [Check(ADMIN_ONLY, FAIL, "GET /api/doctor: the answer has no list of checks")]
    return [_check(item) for item in checks if isinstance(item, dict)]


def _check(item: dict[str, Any]) -> Check:
    return Check(
        str(item.get("check", "?")), str(item.get("verdict", FAIL)), str(item.get("detail", ""))
    )


# -- the command ----------------------------------------------------------------


async def run_checks(client: Client) -> list[Check]:
    checks = [await check_health(client)]
    if checks[0].verdict != OK:
        return checks  # nothing else can be asked
    checks += await check_session(client)
    checks += await service_checks(client)
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
