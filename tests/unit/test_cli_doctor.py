"""``edgeloader doctor``'s own side: its lines, and a service that cannot
be reached. The service's checks are tests/unit/test_diagnostics.py's; the
whole command against a real service is in
tests/integration/test_cli_client.py."""

from __future__ import annotations

from pathlib import Path

from edgeloader.cli.client import Client
from edgeloader.cli.commands.doctor import FAIL, Check, run_checks
from edgeloader.cli.credentials import CredentialStore
from tests.support.harness.net import dead_url


def test_a_check_is_one_aligned_line() -> None:
    assert Check("swap", "ok", "no swap").line() == "ok    swap             no swap"
    long = Check("function images", "fail", "image gone").line()
    assert long == "fail  function images  image gone"


async def test_a_service_that_cannot_be_reached_is_the_one_line(tmp_path: Path) -> None:
    url = dead_url()
    async with Client(url, CredentialStore(tmp_path / "config")) as client:
        checks = await run_checks(client)
    assert [(c.check, c.verdict) for c in checks] == [("service", FAIL)]
    assert "cannot reach the service" in checks[0].detail
