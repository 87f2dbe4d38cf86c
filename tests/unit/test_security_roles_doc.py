"""docs/security.md's role table names every route the app serves: a new
route without a row is a failed test, not a gap found by a reader."""

from __future__ import annotations

import re
from pathlib import Path

from edgeloader.config import Settings
from edgeloader.web.app import create_app

SECURITY = Path(__file__).resolve().parents[2] / "docs/security.md"


def role_table() -> list[str]:
    """The paths the first column of the "Roles" table names; ``…`` ends a
    prefix."""
    section = SECURITY.read_text().split("\n## Roles\n", 1)[1].split("\n## ", 1)[0]
    paths = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split(" | ", 1)[0]
        for item in re.findall(r"`([^`]+)`", first):
            path = item.split()[-1]
            if path.startswith("/"):
                paths.append(path)
    return paths


def named(path: str, table: list[str]) -> bool:
    for entry in table:
        if entry.endswith("…"):
            if path.startswith(entry[:-1]):
                return True
        elif path == entry or path.startswith(entry + "/"):
            return True
    return False


def test_the_table_is_read() -> None:
    table = role_table()
    assert "/api/images" in table
    assert "/api/keys…" in table
    assert named("/api/keys/{key_id}", table)
    assert named("/load/{filename}", table)
    assert not named("/api/nothing", table)


def test_every_route_has_a_row() -> None:
    app = create_app(Settings(resource_api_url="http://resource-api.invalid"))
    paths = {route.resource.canonical for route in app.router.routes() if route.resource}
    assert "/api/images" in paths
    table = role_table()
    missing = sorted(path for path in paths if not named(path, table))
    assert not missing, f"docs/security.md's role table lacks {missing}"
