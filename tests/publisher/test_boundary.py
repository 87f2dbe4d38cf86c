"""The publisher reaches the device package through one face only,
``edgeloader.publishing``, so that the device's internals can move."""

from __future__ import annotations

import ast
from pathlib import Path

PUBLISHER = Path(__file__).parents[2] / "publisher" / "src" / "edgeloader_publisher"


def device_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "edgeloader" or name.startswith("edgeloader.")}


def test_the_publisher_imports_only_the_publishing_face() -> None:
    sources = sorted(PUBLISHER.rglob("*.py"))
    assert sources
    used = {str(path.relative_to(PUBLISHER)): device_imports(path) for path in sources}
    assert all(modules <= {"edgeloader.publishing"} for modules in used.values()), used
    assert any(used.values())
