"""Prometheus metrics: one registry per app, fed by the services.

Every series lives in the :class:`Metrics` of one app (its own
``CollectorRegistry``, never the process-wide default), so several apps in
one process, as in the tests, count apart.

The app makes one :class:`Metrics` and hands it to every service that
records (``web/app.py``); code without an app (the publishing CLI,
benchmarks) hands its own, which nobody reads.

Label values are bounded: ``route`` is a route's pattern (or
``unmatched``), ``method`` one of the usual methods (or ``other``),
``function`` a deployed function's name, and every other label one of a
fixed set named where it is recorded (docs/metrics.md lists them).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from edgeloader.errors import IntegrityError

__all__ = ["AUTH_EVENTS", "METHODS", "MODEL_MOUNT_OUTCOMES", "UNMATCHED", "Metrics"]

#: The ``route`` of a request that matched no route (404, 405).
UNMATCHED = "unmatched"
#: Methods counted under their own name; any other is ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The values of ``edgeloader_auth_events_total{event}``.
AUTH_EVENTS = frozenset(
    {
        "login_ok",
        "login_denied",
        "login_forbidden",
        "token_ok",
        "token_denied",
        "refresh_ok",
        "refresh_reuse",
        "logout",
        "key_created",
        "key_revoked",
        "key_bearer_ok",
        "throttled",
        "access_denied",
    }
)

#: The values of ``edgeloader_model_mounts_total{outcome}``.
MODEL_MOUNT_OUTCOMES = ("ok", "cached", "integrity", "not-found", "no-room", "error")
#: The labelled counters whose values form a closed set, each set to 0 when
#: the registry is made: a series that exists from the start rises from 0,
#: so ``increase()`` sees its first event too (docs/monitoring.md).
_UNLOCK_OUTCOMES = ("ready", "error")
_LOAD_SOURCES = ("cdn", "cache")
_CDN_READ_FAILURES = ("retries-spent", "object-changed")

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# Peak memory: 1 MiB to 4 GiB (the largest memoryMb), by powers of 4.
_MEMORY_BUCKETS = tuple(float(1 << n) for n in range(20, 33, 2))


class Metrics:
    """Every series of the loader, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "edgeloader_http_requests",
            "HTTP requests answered, by route pattern, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "edgeloader_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route pattern",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.load_bytes = Counter(
            "edgeloader_load_bytes",
            "Plaintext bytes a load sent, by where the ciphertext came from (cdn, cache)",
            ["source"],
            registry=r,
        )
        self.upload_bytes = Counter(
            "edgeloader_upload_bytes",
            "Plaintext bytes of uploads that were published",
            registry=r,
        )
        self.unlocks = Counter(
            "edgeloader_unlock",
            "Unlock runs that ended, by outcome (ready, error)",
            ["outcome"],
            registry=r,
        )
        self.integrity_failures = Counter(
            "edgeloader_integrity_failures",
            "Refusals under the signed release manifest, by reason",
            ["reason"],
            registry=r,
        )
        self.function_runs = Counter(
            "edgeloader_function_runs",
            "Function runs that ended, by function and final status",
            ["function", "status"],
            registry=r,
        )
        self.function_duration = Histogram(
            "edgeloader_function_run_duration_seconds",
            "Run time of function runs that started, by function",
            ["function"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.function_cpu = Counter(
            "edgeloader_function_cpu_seconds",
            "CPU time used by function runs, by function",
            ["function"],
            registry=r,
        )
        self.function_memory_peak = Histogram(
            "edgeloader_function_memory_peak_bytes",
            "Peak memory of function runs, by function",
            ["function"],
            buckets=_MEMORY_BUCKETS,
            registry=r,
        )
        self.function_cold_starts = Counter(
            "edgeloader_function_cold_starts",
            "Function runs that started a container, by function",
            ["function"],
            registry=r,
        )
        self.model_store_bytes = Gauge(
            "edgeloader_model_store_bytes",
            "Bytes of decrypted models held in memory for function runs",
            registry=r,
        )
        self.model_mounts = Counter(
            "edgeloader_model_mounts",
            "Models a run asked for, by outcome (ok, cached, integrity, not-found, no-room, error)",
            ["outcome"],
            registry=r,
        )
        self.function_queue_depth = Gauge(
            "edgeloader_function_queue_depth",
            "Runs admitted but not running yet, by function",
            ["function"],
            registry=r,
        )
        self.auth_events = Counter(
            "edgeloader_auth_events",
            "Authentication events, by kind (docs/metrics.md)",
            ["event"],
            registry=r,
        )
        self.event_streams = Gauge(
            "edgeloader_event_streams",
            "Open /api/events streams",
            registry=r,
        )
        self.events_dropped = Counter(
            "edgeloader_events_dropped",
            "Events not delivered to a stream whose queue was full",
            registry=r,
        )
        self.cdn_read_retries = Counter(
            "edgeloader_cdn_read_retries",
            "Parts of CDN reads requested again after a drop or a stall",
            registry=r,
        )
        self.cdn_read_failures = Counter(
            "edgeloader_cdn_read_failures",
            "CDN reads that failed once started, by reason (retries-spent, object-changed)",
            ["reason"],
            registry=r,
        )
        # Read when scraped (docs/metrics.md): the app says where from.
        self.state_free_bytes = Gauge(
            "edgeloader_state_free_bytes",
            "Bytes free for the service on the file system of the state folder",
            registry=r,
        )
        self.state_size_bytes = Gauge(
            "edgeloader_state_size_bytes",
            "Size in bytes of the file system of the state folder",
            registry=r,
        )
        self.run_folders_bytes = Gauge(
            "edgeloader_run_folders_bytes",
            "Bytes held in the run folders (tmpfs) of runs and warm containers",
            registry=r,
        )
        self.run_folders_limit_bytes = Gauge(
            "edgeloader_run_folders_limit_bytes",
            "Sum of the sizes (diskMb) of the run folders mounted now",
            registry=r,
        )
        self.model_store_limit_bytes = Gauge(
            "edgeloader_model_store_limit_bytes",
            "Most bytes of decrypted models the store may hold (EDGELOADER_MODEL_MEMORY_MAX)",
            registry=r,
        )
        ProcessCollector(registry=r)
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        for event in sorted(AUTH_EVENTS):
            self.auth_events.labels(event)
        for outcome in _UNLOCK_OUTCOMES:
            self.unlocks.labels(outcome)
        for reason in IntegrityError.REASONS:
            self.integrity_failures.labels(reason)
        for outcome in MODEL_MOUNT_OUTCOMES:
            self.model_mounts.labels(outcome)
        for source in _LOAD_SOURCES:
            self.load_bytes.labels(source)
        for reason in _CDN_READ_FAILURES:
            self.cdn_read_failures.labels(reason)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus's text
        format by default, OpenMetrics on request), and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # What is read at each scrape.

    def watch_state_dir(self, path: Path) -> None:
        """The state folder's file system: its free bytes and size, read
        at each scrape (NaN while it cannot be read)."""

        def read(field: str) -> Callable[[], float]:
            def value() -> float:
                try:
                    return float(getattr(shutil.disk_usage(path), field))
                except OSError:
                    return float("nan")

            return value

        self.state_free_bytes.set_function(read("free"))
        self.state_size_bytes.set_function(read("total"))

    def watch_run_folders(self, usage: Callable[[], tuple[int, int]]) -> None:
        """``usage()`` gives the run folders' (used, size) in bytes at each scrape."""
        self.run_folders_bytes.set_function(lambda: usage()[0])
        self.run_folders_limit_bytes.set_function(lambda: usage()[1])

    # What the services record, one call where each event happens.

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route).observe(seconds)

    def load_sent(self, source: str, n: int) -> None:
        """A load sent ``n`` plaintext bytes read from ``source`` (cdn or cache)."""
        if n:
            self.load_bytes.labels(source).inc(n)

    def upload_published(self, n: int) -> None:
        """An upload of ``n`` plaintext bytes was published."""
        self.upload_bytes.inc(n)

    def unlock_ended(self, outcome: str) -> None:
        """An unlock run ended: ``ready`` or ``error``."""
        self.unlocks.labels(outcome).inc()

    def integrity_failure(self, reason: str) -> None:
        """A refusal under the manifest; ``reason`` is one of ``IntegrityError.REASONS``."""
        self.integrity_failures.labels(reason).inc()

    def function_run(
        self,
        function: str,
        status: str,
        seconds: float | None,
        *,
        cpu_seconds: float | None = None,
        memory_peak: int | None = None,
        cold_start: bool = False,
    ) -> None:
        """A run ended with ``status``; ``seconds`` is its run time (None if
        it never started), the rest what it used, where known."""
        self.function_runs.labels(function, status).inc()
        if seconds is not None:
            self.function_duration.labels(function).observe(seconds)
        if cpu_seconds is not None:
            self.function_cpu.labels(function).inc(cpu_seconds)
        if memory_peak is not None:
            self.function_memory_peak.labels(function).observe(memory_peak)
        if cold_start:
            self.function_cold_starts.labels(function).inc()

    def model_mounted(self, outcome: str) -> None:
        """A run asked for a model: ``outcome`` says what came of it."""
        self.model_mounts.labels(outcome).inc()

    def function_waiting(self, function: str, waiting: int) -> None:
        """``waiting`` runs of ``function`` are admitted but not running."""
        self.function_queue_depth.labels(function).set(waiting)

    def auth_event(self, event: str) -> None:
        """One of :data:`AUTH_EVENTS` happened."""
        if event not in AUTH_EVENTS:
            raise ValueError(f"unknown auth event {event!r}")
        self.auth_events.labels(event).inc()

    def cdn_read_retried(self) -> None:
        self.cdn_read_retries.inc()

    def cdn_read_failed(self, reason: str) -> None:
        """``reason``: ``retries-spent`` or ``object-changed``."""
        self.cdn_read_failures.labels(reason).inc()
