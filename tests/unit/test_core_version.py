"""The package refuses a native core of another version, and says what to do
when the core is missing. Each import runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import edgeloader
from edgeloader import _core

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_core_version_equals_package_and_crate_versions() -> None:
    cargo = tomllib.loads((ROOT / "rust_core" / "Cargo.toml").read_text())
    assert _core.__version__ == edgeloader.__version__ == cargo["package"]["version"]


@pytest.mark.parametrize(
    "first_import",
    ["edgeloader", "edgeloader._core", "edgeloader.errors", "edgeloader.crypto"],
)
def test_any_import_order_works_in_a_fresh_interpreter(first_import: str) -> None:
    code = (
        f"import {first_import}\n"
        "from edgeloader import _core\n"
        "from edgeloader.errors import DecryptionError\n"
        "try:\n"
        "    _core.decrypt_v1(bytes(32), bytes(32))\n"
        "except DecryptionError:\n"
        "    print('ok', _core.__version__)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {edgeloader.__version__}"


def test_a_core_of_another_version_is_refused_naming_both() -> None:
    edgeloader._check_core_version(edgeloader.__version__)
    with pytest.raises(ImportError) as info:
        edgeloader._check_core_version("9.9.9")
    message = str(info.value)
    assert "9.9.9" in message
    assert edgeloader.__version__ in message
    assert "make dev" in message


def test_a_missing_core_says_run_make_dev() -> None:
    # None in sys.modules makes the import fail as a missing module would.
    result = run_python("import sys\nsys.modules['edgeloader._core'] = None\nimport edgeloader\n")
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "run make dev" in result.stderr
