"""The one typed settings object, read from the environment.

Every knob of the loader lives here. ``Settings.from_env`` validates
everything up front so that bad configuration stops start-up with a single
clear line (a :class:`ConfigError`) instead of failing later mid-request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from edgeloader.errors import ConfigError

MiB = 1 << 20
AUTH_MODES = ("required", "compat")


@dataclass(frozen=True)
class CdnOverrides:
    """``EDGELOADER_CDN_*``: each one, when set, wins over ``cdn.yaml``."""

    host: str | None = None
    downloader_access_key: str | None = None
    downloader_access_secret: str | None = None
    uploader_access_key: str | None = None
    uploader_access_secret: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CdnOverrides:
        def get(name: str) -> str | None:
            return env.get(name, "").strip() or None

        overrides = cls(
            host=get("EDGELOADER_CDN_HOST"),
            downloader_access_key=get("EDGELOADER_CDN_DOWNLOADER_ACCESS_KEY"),
            downloader_access_secret=get("EDGELOADER_CDN_DOWNLOADER_ACCESS_SECRET"),
            uploader_access_key=get("EDGELOADER_CDN_UPLOADER_ACCESS_KEY"),
            uploader_access_secret=get("EDGELOADER_CDN_UPLOADER_ACCESS_SECRET"),
            region=get("EDGELOADER_CDN_REGION") or "us-east-1",
        )
        if overrides.host:
            _check_url("EDGELOADER_CDN_HOST", overrides.host)
        return overrides


@dataclass(frozen=True)
class FunctionSettings:
    """``EDGELOADER_MAX_RUNS`` and the other knobs of function runs (docs/functions.md)."""

    max_runs: int = 2  # runs at once, all functions together (a 2-core box)
    model_memory_max: int = 1024 * MiB  # the decrypted models runs mount, in memory
    warm_max: int = 4  # idle warm containers kept, box-wide
    dir: Path | None = None  # default: STATE_DIR/functions
    run_retention: float = 7 * 86_400  # records of runs that ended longer ago are dropped
    run_records_max: int = 10_000  # and the oldest beyond this many
    run_kept_bytes_max: int = 256 * MiB  # and beyond this much kept output in all
    output_max: int = 1 * MiB  # per captured stream, result.json and logs.json
    request_max: int = 1 * MiB  # an invoke body, which becomes request.json
    build_context_max: int = 256 * MiB  # an uploaded build context
    build_timeout: float = 30 * 60

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FunctionSettings:
        folder = env.get("EDGELOADER_FUNCTIONS_DIR", "").strip()
        return cls(
            max_runs=_integer(env, "EDGELOADER_MAX_RUNS", cls.max_runs, 1, 64),
            model_memory_max=_integer(
                env, "EDGELOADER_MODEL_MEMORY_MAX", cls.model_memory_max, MiB, 1 << 40
            ),
            warm_max=_integer(env, "EDGELOADER_WARM_MAX", cls.warm_max, 0, 256),
            dir=_absolute(folder) if folder else None,
            run_retention=_seconds(env, "EDGELOADER_RUN_RETENTION", cls.run_retention),
            run_records_max=_integer(
                env, "EDGELOADER_RUN_RECORDS_MAX", cls.run_records_max, 10, 10_000_000
            ),
            run_kept_bytes_max=_integer(
                env, "EDGELOADER_RUN_KEPT_BYTES_MAX", cls.run_kept_bytes_max, MiB, 1 << 40
            ),
            output_max=_integer(env, "EDGELOADER_RUN_OUTPUT_MAX", cls.output_max, 1024, 64 * MiB),
            request_max=_integer(
                env, "EDGELOADER_INVOKE_BODY_MAX", cls.request_max, 1024, 64 * MiB
            ),
            build_context_max=_integer(
                env, "EDGELOADER_BUILD_CONTEXT_MAX", cls.build_context_max, 1024, 64 * 1024 * MiB
            ),
            build_timeout=_seconds(env, "EDGELOADER_BUILD_TIMEOUT", cls.build_timeout),
        )


@dataclass(frozen=True)
class DownloadSettings:
    """``EDGELOADER_DOWNLOAD_*``: how big parts are read from the CDN, by
    loads and pre-staging alike (docs/architecture.md, "Parallel ranged reads")."""

    connections: int = 4  # ranged reads at once per object; 1: every object as one stream
    part_size: int = 8 * MiB  # rounded to the format's unit (16 B in v1, whole chunks in v2)
    parallel_min: int = 16 * MiB  # smaller objects are read as one stream
    inflight_max: int = 64 * MiB  # CDN bytes in memory, all reads together
    max_rate: int | None = None  # bytes/s over all CDN reads; None: no cap
    stall_timeout: float = 30.0  # a read that receives nothing this long is dropped and resumed
    retries: int = 5  # per part, once the object's first answer has arrived
    retry_backoff: float = 0.5  # the first wait between tries; it doubles up to 8 s

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DownloadSettings:
        part_size = _integer(
            env, "EDGELOADER_DOWNLOAD_PART_SIZE", cls.part_size, 64 * 1024, 1024 * MiB
        )
        inflight = _integer(
            env, "EDGELOADER_DOWNLOAD_INFLIGHT_MAX", cls.inflight_max, 4 * MiB, 64 * 1024 * MiB
        )
        if inflight < part_size:
            raise ConfigError(
                "EDGELOADER_DOWNLOAD_INFLIGHT_MAX must be at least EDGELOADER_DOWNLOAD_PART_SIZE"
            )
        rate = env.get("EDGELOADER_DOWNLOAD_MAX_RATE", "").strip()
        return cls(
            connections=_integer(env, "EDGELOADER_DOWNLOAD_CONNECTIONS", cls.connections, 1, 64),
            part_size=part_size,
            parallel_min=_integer(
                env, "EDGELOADER_DOWNLOAD_PARALLEL_MIN", cls.parallel_min, 0, 1 << 62
            ),
            inflight_max=inflight,
            max_rate=(
                _integer(env, "EDGELOADER_DOWNLOAD_MAX_RATE", 0, 1024, 1 << 62) if rate else None
            ),
            stall_timeout=_seconds(env, "EDGELOADER_DOWNLOAD_STALL_TIMEOUT", cls.stall_timeout),
            retries=_integer(env, "EDGELOADER_DOWNLOAD_RETRIES", cls.retries, 0, 100),
            retry_backoff=_seconds(env, "EDGELOADER_DOWNLOAD_RETRY_BACKOFF", cls.retry_backoff),
        )


@dataclass(frozen=True)
class AuthLimits:
    """Bounds of the login throttle and the audit (docs/security.md).

    The storage bounds are in bytes, so that no client input, however
    long, can make either grow past them.
    """

    free_failures: int = 5  # failed attempts per address or identity before waits start
    first_wait: float = 1.0  # the wait after the last free failure; it doubles with each further
    max_wait: float = 15 * 60
    forget_after: float = 60 * 60  # a key's failures are forgotten this long after its last one
    throttle_max_bytes: int = 16 * MiB
    audit_retention: float = 90 * 86_400
    audit_max_bytes: int = 64 * MiB

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthLimits:
        return cls(
            throttle_max_bytes=_integer(
                env, "EDGELOADER_THROTTLE_MAX_BYTES", cls.throttle_max_bytes, 64 * 1024, 1024 * MiB
            ),
            audit_retention=_seconds(env, "EDGELOADER_AUDIT_RETENTION", cls.audit_retention),
            audit_max_bytes=_integer(
                env, "EDGELOADER_AUDIT_MAX_BYTES", cls.audit_max_bytes, 64 * 1024, 64 * 1024 * MiB
            ),
        )


@dataclass(frozen=True)
class Settings:
    resource_api_url: str
    images_path: Path = Path("/opt/edgeloader/images.enc")
    api_version: str = "latest"
    api_services: tuple[str, ...] = ()
    cache_dir: Path | None = None
    prefetch_max_jobs: int = 32  # pre-staging jobs running or waiting at once
    prefetch_max_jobs_per_caller: int = 8  # of those, started by one identity
    host: str = "0.0.0.0"  # noqa: S104 - a device service, reached by agents on the box
    port: int = 8080
    docker_host: str | None = None
    cdn: CdnOverrides = field(default_factory=CdnOverrides)
    upstream_jwt_key: str | None = None
    # Agent authentication (docs/security.md).
    auth_mode: str = "required"
    state_dir: Path = Path("/var/lib/edgeloader")
    access_token_ttl: float = 15 * 60
    refresh_token_ttl: float = 30 * 86_400
    token_issuer: str = "edgeloader"  # noqa: S105 - the `iss` claim, not a secret
    # Integrity (docs/security.md): the publisher's Ed25519 public key (PEM).
    publisher_key: Path | None = None
    # Container format of what /upload writes: 1 keeps mixed Azaion fleets working.
    upload_format: int = 1
    # Tuning; the defaults suit small devices.
    chunk_size: int = 1 * MiB
    upload_part_size: int = 8 * MiB
    max_upload_bytes: int = 64 * 1024 * MiB
    api_timeout: float = 30.0
    cdn_connect_timeout: float = 10.0
    functions: FunctionSettings = field(default_factory=FunctionSettings)
    auth_limits: AuthLimits = field(default_factory=AuthLimits)
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    # Connections (web/server.py): None means half of what the descriptor limit leaves.
    max_connections: int | None = None
    header_timeout: float = 15.0
    body_timeout: float = 30.0
    body_min_rate: int = 1024  # bytes/s a request body must average over body_timeout
    # The event stream, GET /api/events (docs/events.md).
    events_heartbeat: float = 15.0  # a comment line this often keeps proxies from closing it
    events_queue: int = 256  # events held per stream before its oldest are dropped
    events_max_streams: int = 64  # streams open at once
    events_max_streams_per_caller: int = 8  # of those, held by one identity

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        url = get("RESOURCE_API_URL")
        if url is None:
            raise ConfigError("RESOURCE_API_URL is required (the Resource API base URL)")
        _check_url("RESOURCE_API_URL", url)
        cdn = CdnOverrides.from_env(env)
        services = tuple(s.strip() for s in (get("EDGELOADER_API_SERVICES") or "").split(","))
        cache = get("EDGELOADER_CACHE_DIR")
        auth_mode = (get("EDGELOADER_AUTH") or "required").lower()
        if auth_mode not in AUTH_MODES:
            raise ConfigError(f"EDGELOADER_AUTH must be one of {', '.join(AUTH_MODES)}")
        settings = cls(
            resource_api_url=url.rstrip("/"),
            images_path=_absolute(get("IMAGES_PATH") or cls.images_path),
            api_version=get("API_VERSION") or cls.api_version,
            api_services=tuple(s for s in services if s),
            cache_dir=_absolute(cache) if cache else None,
            prefetch_max_jobs=_integer(
                env, "EDGELOADER_PREFETCH_MAX_JOBS", cls.prefetch_max_jobs, 1, 4096
            ),
            prefetch_max_jobs_per_caller=_integer(
                env,
                "EDGELOADER_PREFETCH_MAX_JOBS_PER_CALLER",
                cls.prefetch_max_jobs_per_caller,
                1,
                4096,
            ),
            host=get("EDGELOADER_HOST") or cls.host,
            port=_port(get("EDGELOADER_PORT") or str(cls.port)),
            docker_host=get("DOCKER_HOST"),
            cdn=cdn,
            upstream_jwt_key=get("EDGELOADER_UPSTREAM_JWT_KEY"),
            auth_mode=auth_mode,
            state_dir=_absolute(get("EDGELOADER_STATE_DIR") or cls.state_dir),
            publisher_key=_absolute(key) if (key := get("EDGELOADER_PUBLISHER_KEY")) else None,
            upload_format=_format(get("EDGELOADER_UPLOAD_FORMAT") or "v1"),
            access_token_ttl=_seconds(env, "EDGELOADER_ACCESS_TOKEN_TTL", cls.access_token_ttl),
            refresh_token_ttl=_seconds(env, "EDGELOADER_REFRESH_TOKEN_TTL", cls.refresh_token_ttl),
            max_connections=(
                _integer(env, "EDGELOADER_MAX_CONNECTIONS", 0, 1, 1_000_000)
                if get("EDGELOADER_MAX_CONNECTIONS")
                else None
            ),
            header_timeout=_seconds(env, "EDGELOADER_HEADER_TIMEOUT", cls.header_timeout),
            body_timeout=_seconds(env, "EDGELOADER_BODY_TIMEOUT", cls.body_timeout),
            body_min_rate=_integer(env, "EDGELOADER_BODY_MIN_RATE", cls.body_min_rate, 0, 1 << 30),
            events_heartbeat=_seconds(env, "EDGELOADER_EVENTS_HEARTBEAT", cls.events_heartbeat),
            events_queue=_integer(env, "EDGELOADER_EVENTS_QUEUE", cls.events_queue, 16, 65536),
            events_max_streams_per_caller=_integer(
                env,
                "EDGELOADER_EVENTS_MAX_STREAMS_PER_CALLER",
                cls.events_max_streams_per_caller,
                1,
                4096,
            ),
            events_max_streams=_integer(
                env, "EDGELOADER_EVENTS_MAX_STREAMS", cls.events_max_streams, 1, 4096
            ),
            functions=FunctionSettings.from_env(env),
            auth_limits=AuthLimits.from_env(env),
            downloads=DownloadSettings.from_env(env),
        )
        return settings

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields changed (CLI flags win over the environment)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def functions_dir(self) -> Path:
        """Where function runs and their records live."""
        return self.functions.dir or self.state_dir / "functions"

    @property
    def expected_images(self) -> tuple[str, ...]:
        """Image references that must be in the engine after an unlock."""
        return tuple(f"{repo}:{self.api_version}" for repo in self.api_services)


def _check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be {low}-{high}, got {value}")
    return value


def _format(value: str) -> int:
    formats = {"v1": 1, "v2": 2}
    if value.lower() not in formats:
        raise ConfigError(f"EDGELOADER_UPLOAD_FORMAT must be v1 or v2, got {value!r}")
    return formats[value.lower()]


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"EDGELOADER_PORT must be a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"EDGELOADER_PORT must be 0-65535, got {port}")
    return port


def _absolute(path: str | Path) -> Path:
    """A path setting made absolute against the working directory at start:
    the engine resolves a run folder's bind from its own working directory,
    so a relative one would name another folder there."""
    return Path(os.path.abspath(path))
