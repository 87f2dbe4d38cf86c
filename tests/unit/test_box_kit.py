"""The box kit: the systemd unit, the Prometheus alert rules and the
Grafana dashboard (deploy/, docs/grafana/, docs/monitoring.md).

The unit is checked with ``systemd-analyze`` (Debian's ``systemd``), the
rules with ``promtool`` (Debian's ``prometheus``); both come from
``scripts/install-engine.sh``. The rules and the dashboard may name only
series that the loader's metrics registry declares: a counter never
incremented has no samples, so names are checked, not samples.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeloader.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/edgeloader.service"
ENV_FILE = ROOT / "deploy/systemd/edgeloader.env"
RULES = ROOT / "deploy/prometheus/edgeloader-alerts.yml"
RULE_TESTS = [
    ROOT / "deploy/prometheus/edgeloader-alerts.test.yml",
    ROOT / "deploy/prometheus/edgeloader-alerts-daily.test.yml",
]
DASHBOARD = ROOT / "docs/grafana/edgeloader.json"
CONFIGURATION = ROOT / "docs/configuration.md"

#: The one series the rules use that no registry declares: Prometheus adds
#: it to every target it scrapes.
SCRAPE_SERIES = {"up"}

#: Unit settings that give a service a mount namespace of its own (systemd
#: 252's exec_needs_mount_namespace()); under any of them the engine cannot
#: see the run folders the loader mounts. PrivateNetwork= is here because
#: newer systemd versions imply PrivateMounts= with it.
MOUNT_NAMESPACE_SETTINGS = {
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "PrivateIPC",
    "PrivateNetwork",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "RootDirectory",
    "RootImage",
    "MountImages",
    "ExtensionImages",
    "ExtensionDirectories",
    "LogNamespace",
    "NetworkNamespacePath",
    "IPCNamespacePath",
    "DynamicUser",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/install-engine.sh as root"
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def unit_settings(path: Path) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) of every setting in a unit file."""
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        yield section, key.strip(), value.strip()


def service(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for section, key, value in unit_settings(path):
        if section == "Service":
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed here: ExecStart= names this venv's
    ``edgeloader`` instead of the box's /opt/edgeloader/venv (verify
    checks that the program exists); nothing else changes."""
    program = Path(sys.executable).parent / "edgeloader"
    assert program.is_file(), program
    text = UNIT.read_text()
    box_program = "/opt/edgeloader/venv/bin/edgeloader"
    assert text.count(f"ExecStart={box_program} ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={box_program} ", f"ExecStart={program} "))
    return copy


def test_the_unit_verifies_without_a_warning(installed_unit: Path) -> None:
    # verify exits 0 on an unknown key or a bad value and only warns, so
    # its output must be empty as well.
    result = run(tool("systemd-analyze"), "verify", "--man=no", installed_unit)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_would_catch_a_mistake(installed_unit: Path) -> None:
    broken = installed_unit.with_name("broken.service")
    broken.write_text(installed_unit.read_text().replace("Restart=on-failure", "Restart=often"))
    result = run(tool("systemd-analyze"), "verify", "--man=no", broken)
    assert "restart specifier, ignoring: often" in result.stderr


def test_the_unit_runs_the_service_in_the_hosts_mount_namespace() -> None:
    settings = service(UNIT)
    assert not MOUNT_NAMESPACE_SETTINGS & settings.keys()
    assert settings.get("MountFlags", ["shared"]) == ["shared"]
    # Root, for mount(2): no User= and no user namespace.
    assert "User" not in settings
    assert "PrivateUsers" not in settings


def test_the_unit_is_hardened_otherwise(installed_unit: Path) -> None:
    settings = service(UNIT)
    assert settings["ExecStart"] == ["/opt/edgeloader/venv/bin/edgeloader serve"]
    assert settings["EnvironmentFile"] == ["/etc/edgeloader/edgeloader.env"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert set(settings["CapabilityBoundingSet"][0].split()) == {
        "CAP_SYS_ADMIN",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
    }
    assert "mount" in settings["SystemCallFilter"][0].split()
    # systemd's own review of the unit's exposure (0 best, 10 worst), as a
    # floor the unit must keep: 4.5 at the time of writing.
    result = run(
        tool("systemd-analyze"),
        "security",
        "--offline=yes",
        "--man=no",
        "--threshold=50",
        installed_unit,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def documented_variables() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", CONFIGURATION.read_text()))


def test_the_environment_file_names_only_documented_variables() -> None:
    names = re.findall(r"^#?([A-Z][A-Z0-9_]*)=", ENV_FILE.read_text(), re.MULTILINE)
    assert "RESOURCE_API_URL" in names
    assert set(names) <= documented_variables(), set(names) - documented_variables()


def test_promtool_checks_the_rules() -> None:
    result = run(tool("promtool"), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_runs_the_rule_tests() -> None:
    result = run(tool("promtool"), "test", "rules", *RULE_TESTS, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_each_alert_fires_in_a_rule_test_and_a_healthy_box_fires_none() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    fired: set[str] = set()
    quiet_on_healthy: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                if check["exp_alerts"]:
                    fired.add(check["alertname"])
                elif case["name"].startswith("a healthy box"):
                    quiet_on_healthy.add(check["alertname"])
    assert fired == alerts
    assert quiet_on_healthy == alerts


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's ``$vars``
    allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        is_function = text[match.end() :].lstrip().startswith("(")
        if not is_function and match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_series_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (route, le) (rate(a_bucket{route!~"/x|y"}[5m])))'
        " > 2 * on (job) group_left b offset 1d or (c_total > 1e3 unless c_total offset 15m)"
        ' / sum(rate(d{instance=~"$instance"}[$__rate_interval])) without (le)'
    )
    assert series_names(expr) == {"a_bucket", "b", "c_total", "d"}


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def declared_series() -> set[str]:
    """Every series name the app's registry can expose, sampled yet or not."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_the_registry_is_read_with_every_kind_of_series() -> None:
    declared = declared_series()
    assert {
        "edgeloader_auth_events_total",
        "edgeloader_function_queue_depth",
        "edgeloader_http_request_duration_seconds_bucket",
        "process_open_fds",
    } <= declared
    assert "edgeloader_auth_events" not in declared


def test_the_alert_rules_use_only_declared_series() -> None:
    used = set().union(*(series_names(rule["expr"]) for rule in alert_rules()))
    assert used
    assert used <= declared_series() | SCRAPE_SERIES, used - declared_series()


def dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL text in a dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", value)
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def test_the_dashboard_is_json_and_queries_only_declared_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "edgeloader"
    queries = list(dashboard_queries(dashboard))
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    assert targets
    assert all(t["expr"] in queries for t in targets)
    used = set().union(*(series_names(q) for q in queries))
    assert used <= declared_series() | SCRAPE_SERIES, used - declared_series()
