"""The series read at each scrape (the state folder's file system, the run
folders) and the counters exported at 0 from the start (docs/metrics.md)."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeloader.errors import IntegrityError
from edgeloader.functions.folders import RunFolders
from edgeloader.metrics import AUTH_EVENTS, MODEL_MOUNT_OUTCOMES, Metrics

MiB = 1 << 20


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.exposition()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_counters_of_a_closed_label_set_start_at_zero() -> None:
    samples = scrape(Metrics())
    expected = (
        {("edgeloader_auth_events_total", "event", value) for value in AUTH_EVENTS}
        | {
            ("edgeloader_integrity_failures_total", "reason", value)
            for value in IntegrityError.REASONS
        }
        | {("edgeloader_model_mounts_total", "outcome", value) for value in MODEL_MOUNT_OUTCOMES}
        | {
            ("edgeloader_unlock_total", "outcome", "ready"),
            ("edgeloader_unlock_total", "outcome", "error"),
            ("edgeloader_load_bytes_total", "source", "cdn"),
            ("edgeloader_load_bytes_total", "source", "cache"),
            ("edgeloader_cdn_read_failures_total", "reason", "retries-spent"),
            ("edgeloader_cdn_read_failures_total", "reason", "object-changed"),
        }
    )
    for name, label, value in expected:
        assert samples[(name, frozenset({(label, value)}))] == 0, (name, value)
    # A function's name is no closed set: nothing until a run ends.
    assert not any(name == "edgeloader_function_runs_total" for name, _ in samples)


def test_a_counter_started_at_zero_still_counts() -> None:
    metrics = Metrics()
    metrics.unlock_ended("error")
    samples = scrape(metrics)
    assert samples[("edgeloader_unlock_total", frozenset({("outcome", "error")}))] == 1
    assert samples[("edgeloader_unlock_total", frozenset({("outcome", "ready")}))] == 0


def test_the_state_folders_file_system_is_read_at_each_scrape(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.watch_state_dir(tmp_path)
    samples = scrape(metrics)
    usage = shutil.disk_usage(tmp_path)
    assert samples[("edgeloader_state_size_bytes", frozenset())] == usage.total
    free = samples[("edgeloader_state_free_bytes", frozenset())]
    assert 0 < free <= usage.total


def test_a_state_folder_that_cannot_be_read_is_nan_not_a_failed_scrape(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.watch_state_dir(tmp_path / "gone")
    samples = scrape(metrics)
    assert math.isnan(samples[("edgeloader_state_free_bytes", frozenset())])
    assert math.isnan(samples[("edgeloader_state_size_bytes", frozenset())])


RUNS = ("a" * 32, "b" * 32)


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[RunFolders]:
    folders = RunFolders(tmp_path)
    folders.open()
    yield folders
    for run in RUNS:
        folders.remove(run)


def test_the_run_folders_held_and_size_are_summed_over_the_mounted_ones(
    folders: RunFolders,
) -> None:
    metrics = Metrics()
    metrics.watch_run_folders(folders.usage)
    idle = scrape(metrics)
    assert idle[("edgeloader_run_folders_bytes", frozenset())] == 0
    assert idle[("edgeloader_run_folders_limit_bytes", frozenset())] == 0

    first = folders.prepare(RUNS[0], b"{}", {}, os.getuid(), 4 * MiB)
    folders.prepare(RUNS[1], None, {}, os.getuid(), 2 * MiB)
    (first / "out.bin").write_bytes(b"x" * MiB)
    busy = scrape(metrics)
    held = busy[("edgeloader_run_folders_bytes", frozenset())]
    assert MiB <= held < MiB + 64 * 1024  # the file, and the input files' pages
    assert busy[("edgeloader_run_folders_limit_bytes", frozenset())] == 6 * MiB

    folders.remove(RUNS[0])
    one = scrape(metrics)
    assert one[("edgeloader_run_folders_bytes", frozenset())] < 64 * 1024
    assert one[("edgeloader_run_folders_limit_bytes", frozenset())] == 2 * MiB
