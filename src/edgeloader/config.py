"""The one typed settings object: the environment, over an optional file.

Every knob is a field of one of the frozen dataclasses below, whose metadata
names its environment variable and the pydantic rules of its value. Loading
checks the knobs with one pydantic-settings model, so a bad value stops
start-up with one clear line (a :class:`ConfigError`), not later mid-request;
dataclasses built directly (by tests) are not checked.

The configuration file (TOML or YAML, named by ``EDGELOADER_CONFIG`` or
``edgeloader serve --config``) holds the same knobs, each under its
variable's name in lower case without ``EDGELOADER_`` (``warm_max`` for
``EDGELOADER_WARM_MAX``). The environment wins over the file and the file
over the defaults (docs/configuration.md).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar, cast, get_type_hints
from urllib.parse import urlsplit

import pydantic
import yaml
from pydantic import AfterValidator, BeforeValidator, ValidationError, create_model
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgeloader.errors import ConfigError

MiB, GiB = 1 << 20, 1 << 30
AUTH_MODES = ("required", "compat")
CONFIG_VARIABLE = "EDGELOADER_CONFIG"  # names the configuration file

T = TypeVar("T")


def knob(default: T, variable: str, *rules: Any, is_path: bool = False) -> T:
    """A field read from ``variable``, checked by the pydantic ``rules``."""
    return field(default=default, metadata={"variable": variable, "rules": rules, "path": is_path})


def whole(default: T, variable: str, low: int, high: int) -> T:
    """A whole number from ``low`` to ``high``."""
    return knob(default, variable, BeforeValidator(_no_flag), AfterValidator(_within(low, high)))


def seconds(default: float, variable: str) -> float:
    """A number of seconds above 0."""
    return knob(float(default), variable, BeforeValidator(_no_flag), pydantic.Field(gt=0))


def path(default: T, variable: str) -> T:
    """A path, made absolute when loaded."""
    return knob(default, variable, AfterValidator(_absolute), is_path=True)


def _within(low: int, high: int) -> Callable[[int], int]:
    def check(number: int) -> int:
        if not low <= number <= high:
            raise ValueError(f"must be {low}-{high}, got {number}")
        return number

    return check


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


def _names(value: object) -> object:
    """A comma-separated list in the environment; a list or the same text in a file."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list | tuple):
        return tuple(s.strip() for s in items if not isinstance(s, str) or s.strip())
    return items


def _auth_mode(value: object) -> object:
    mode = value.lower() if isinstance(value, str) else value
    if mode not in AUTH_MODES:
        raise ValueError(f"must be one of {', '.join(AUTH_MODES)}")
    return mode


def _format(value: object) -> int:
    formats = {"v1": 1, "v2": 2}
    name = value.lower() if isinstance(value, str) else value
    if name not in formats:
        raise ValueError(f"must be v1 or v2, got {value!r}")
    return formats[name]


def _no_flag(value: object) -> object:
    if isinstance(value, bool):  # else a file's `true` would count as 1
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def _absolute(path: Path) -> Path:
    """A path setting made absolute against the working directory at start:
    the engine resolves a run folder's bind from its own working directory,
    so a relative one would name another folder there. (A file's relative
    paths were joined to its folder already.)"""
    return Path(os.path.abspath(path))


@dataclass(frozen=True)
class _Loadable:
    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """This group of settings from ``env`` alone."""
        return _load(cls, env, None)


@dataclass(frozen=True)
class CdnOverrides(_Loadable):
    """``EDGELOADER_CDN_*``: each one, when set, wins over ``cdn.yaml``."""

    host: str | None = knob(None, "EDGELOADER_CDN_HOST", AfterValidator(_url))
    downloader_access_key: str | None = knob(None, "EDGELOADER_CDN_DOWNLOADER_ACCESS_KEY")
    downloader_access_secret: str | None = knob(None, "EDGELOADER_CDN_DOWNLOADER_ACCESS_SECRET")
    uploader_access_key: str | None = knob(None, "EDGELOADER_CDN_UPLOADER_ACCESS_KEY")
    uploader_access_secret: str | None = knob(None, "EDGELOADER_CDN_UPLOADER_ACCESS_SECRET")
    region: str = knob("us-east-1", "EDGELOADER_CDN_REGION")


@dataclass(frozen=True)
class FunctionSettings(_Loadable):
    """``EDGELOADER_MAX_RUNS`` and the other knobs of function runs (docs/functions.md)."""

    # Runs at once, all functions together (a 2-core box).
    max_runs: int = whole(2, "EDGELOADER_MAX_RUNS", 1, 64)
    # The decrypted models runs mount, in memory.
    model_memory_max: int = whole(1024 * MiB, "EDGELOADER_MODEL_MEMORY_MAX", MiB, 1 << 40)
    warm_max: int = whole(4, "EDGELOADER_WARM_MAX", 0, 256)  # idle warm containers, box-wide
    # Default: STATE_DIR/functions.
    dir: Path | None = path(None, "EDGELOADER_FUNCTIONS_DIR")  # noqa: RUF009
    # Records of runs that ended longer ago are dropped, and the oldest beyond
    # these many or this much kept output in all.
    run_retention: float = seconds(7 * 86_400, "EDGELOADER_RUN_RETENTION")
    run_records_max: int = whole(10_000, "EDGELOADER_RUN_RECORDS_MAX", 10, 10_000_000)
    run_kept_bytes_max: int = whole(256 * MiB, "EDGELOADER_RUN_KEPT_BYTES_MAX", MiB, 1 << 40)
    # Per captured stream, result.json and logs.json.
    output_max: int = whole(1 * MiB, "EDGELOADER_RUN_OUTPUT_MAX", 1024, 64 * MiB)
    # An invoke body, which becomes request.json.
    request_max: int = whole(1 * MiB, "EDGELOADER_INVOKE_BODY_MAX", 1024, 64 * MiB)
    # An uploaded build context.
    build_context_max: int = whole(256 * MiB, "EDGELOADER_BUILD_CONTEXT_MAX", 1024, 64 * GiB)
    build_timeout: float = seconds(30 * 60, "EDGELOADER_BUILD_TIMEOUT")


@dataclass(frozen=True)
class DownloadSettings(_Loadable):
    """``EDGELOADER_DOWNLOAD_*``: how big parts are read from the CDN, by
    loads and pre-staging alike (docs/architecture.md, "Parallel ranged reads")."""

    # Ranged reads at once per object; 1: every object as one stream.
    connections: int = whole(4, "EDGELOADER_DOWNLOAD_CONNECTIONS", 1, 64)
    # Rounded to the format's unit (16 B in v1, whole chunks in v2).
    part_size: int = whole(8 * MiB, "EDGELOADER_DOWNLOAD_PART_SIZE", 64 * 1024, GiB)
    # Smaller objects are read as one stream.
    parallel_min: int = whole(16 * MiB, "EDGELOADER_DOWNLOAD_PARALLEL_MIN", 0, 1 << 62)
    # CDN bytes in memory, all reads together; at least part_size (checked when loaded).
    inflight_max: int = whole(32 * MiB, "EDGELOADER_DOWNLOAD_INFLIGHT_MAX", 4 * MiB, 64 * GiB)
    # Bytes/s over all CDN reads; None: no cap.
    max_rate: int | None = whole(None, "EDGELOADER_DOWNLOAD_MAX_RATE", 1024, 1 << 62)
    # A read that receives nothing this long is dropped and resumed.
    stall_timeout: float = seconds(30, "EDGELOADER_DOWNLOAD_STALL_TIMEOUT")
    # Per part, once the object's first answer has arrived.
    retries: int = whole(5, "EDGELOADER_DOWNLOAD_RETRIES", 0, 100)
    # The first wait between tries; it doubles up to 8 s.
    retry_backoff: float = seconds(0.5, "EDGELOADER_DOWNLOAD_RETRY_BACKOFF")


@dataclass(frozen=True)
class AuthLimits(_Loadable):
    """Bounds of the login throttle and the audit (docs/security.md).

    The storage bounds are in bytes, so that no client input, however
    long, can make either grow past them.
    """

    free_failures: int = 5  # failed attempts per address or identity before waits start
    first_wait: float = 1.0  # the wait after the last free failure; it doubles with each further
    max_wait: float = 15 * 60
    forget_after: float = 60 * 60  # a key's failures are forgotten this long after its last one
    throttle_max_bytes: int = whole(16 * MiB, "EDGELOADER_THROTTLE_MAX_BYTES", 64 * 1024, GiB)
    audit_retention: float = seconds(90 * 86_400, "EDGELOADER_AUDIT_RETENTION")
    audit_max_bytes: int = whole(64 * MiB, "EDGELOADER_AUDIT_MAX_BYTES", 64 * 1024, 64 * GiB)


@dataclass(frozen=True)
class Settings:
    resource_api_url: str = knob(
        cast(str, MISSING),  # required
        "RESOURCE_API_URL",
        AfterValidator(_url),
        AfterValidator(lambda url: url.rstrip("/")),
    )
    images_path: Path = path(Path("/opt/edgeloader/images.enc"), "IMAGES_PATH")  # noqa: RUF009
    api_version: str = knob("latest", "API_VERSION")
    api_services: tuple[str, ...] = knob((), "EDGELOADER_API_SERVICES", BeforeValidator(_names))
    cache_dir: Path | None = path(None, "EDGELOADER_CACHE_DIR")  # noqa: RUF009
    # Pre-staging jobs running or waiting at once, and of those started by one identity.
    prefetch_max_jobs: int = whole(32, "EDGELOADER_PREFETCH_MAX_JOBS", 1, 4096)
    prefetch_max_jobs_per_caller: int = whole(8, "EDGELOADER_PREFETCH_MAX_JOBS_PER_CALLER", 1, 4096)
    # A device service, reached by agents on the box.
    host: str = knob("0.0.0.0", "EDGELOADER_HOST")  # noqa: S104
    port: int = whole(8080, "EDGELOADER_PORT", 0, 65535)
    docker_host: str | None = knob(None, "DOCKER_HOST")
    cdn: CdnOverrides = field(default_factory=CdnOverrides)
    upstream_jwt_key: str | None = knob(None, "EDGELOADER_UPSTREAM_JWT_KEY")
    # Agent authentication (docs/security.md).
    auth_mode: str = knob("required", "EDGELOADER_AUTH", BeforeValidator(_auth_mode))
    state_dir: Path = path(Path("/var/lib/edgeloader"), "EDGELOADER_STATE_DIR")  # noqa: RUF009
    access_token_ttl: float = seconds(15 * 60, "EDGELOADER_ACCESS_TOKEN_TTL")
    refresh_token_ttl: float = seconds(30 * 86_400, "EDGELOADER_REFRESH_TOKEN_TTL")
    token_issuer: str = "edgeloader"  # noqa: S105 - the `iss` claim, not a secret
    # Integrity (docs/security.md): the publisher's Ed25519 public key (PEM).
    publisher_key: Path | None = path(None, "EDGELOADER_PUBLISHER_KEY")  # noqa: RUF009
    # Container format of what /upload writes: 1 keeps mixed Azaion fleets working.
    upload_format: int = knob(1, "EDGELOADER_UPLOAD_FORMAT", BeforeValidator(_format))
    # Tuning; the defaults suit small devices.
    chunk_size: int = 1 * MiB
    upload_part_size: int = 8 * MiB
    max_upload_bytes: int = 64 * GiB
    api_timeout: float = 30.0
    cdn_connect_timeout: float = 10.0
    functions: FunctionSettings = field(default_factory=FunctionSettings)
    auth_limits: AuthLimits = field(default_factory=AuthLimits)
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    # Connections (web/server.py): None means half of what the descriptor limit leaves.
    max_connections: int | None = whole(None, "EDGELOADER_MAX_CONNECTIONS", 1, 1_000_000)
    header_timeout: float = seconds(15, "EDGELOADER_HEADER_TIMEOUT")
    body_timeout: float = seconds(30, "EDGELOADER_BODY_TIMEOUT")
    # Bytes/s a request body must average over body_timeout.
    body_min_rate: int = whole(1024, "EDGELOADER_BODY_MIN_RATE", 0, 1 << 30)
    # The event stream, GET /api/events (docs/events.md): a comment line this
    # often keeps proxies from closing it; events held per stream before its
    # oldest are dropped; streams open at once, and of those held by one identity.
    events_heartbeat: float = seconds(15, "EDGELOADER_EVENTS_HEARTBEAT")
    events_queue: int = whole(256, "EDGELOADER_EVENTS_QUEUE", 16, 65536)
    events_max_streams: int = whole(64, "EDGELOADER_EVENTS_MAX_STREAMS", 1, 4096)
    events_max_streams_per_caller: int = whole(
        8, "EDGELOADER_EVENTS_MAX_STREAMS_PER_CALLER", 1, 4096
    )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, file: Path | None = None
    ) -> Settings:
        """The settings from ``env`` (default: the process's environment) over
        the configuration file: ``file`` if given, else ``EDGELOADER_CONFIG``."""
        env = os.environ if env is None else env
        named = env.get(CONFIG_VARIABLE, "").strip()
        return _load(cls, env, file or (Path(named) if named else None))

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields changed (CLI flags win over the environment)."""
        unknown = set(changes) - {f.name for f in fields(self)}
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


def file_keys() -> dict[str, str]:
    """Each setting's key in a configuration file, by its variable."""
    return {variable: _key(variable) for variable in _knobs(Settings)}


def _key(variable: str) -> str:
    return variable.lower().removeprefix("edgeloader_")


# -- loading ----------------------------------------------------------------------------

_Knobs = dict[str, tuple[Any, Field[Any]]]  # each knob's type and field, by its variable


class _Model(BaseSettings):
    """Base of the models made from the dataclasses' knobs: a field per variable."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="forbid", validate_default=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what _load passes (never the process's environment behind its back).
        return (init_settings,)


def _load(cls: type[T], env: Mapping[str, str], file: Path | None) -> T:
    kind: type = cls  # (a class is hashable)
    knobs = _knobs(kind)
    given = {name: env[name].strip() for name in knobs if env.get(name, "").strip()}

    def named(variable: str, with_file: bool = True) -> str:
        """The variable, or the file's key (after the file) when the file gave it."""
        if file is None or variable in given:
            return variable
        return f"{file}: {_key(variable)}" if with_file else _key(variable)

    try:  # the environment wins over the file
        values = _model(kind)(**((_read(file, knobs) if file else {}) | given))
    except ValidationError as exc:
        raise ConfigError(_explain(exc.errors()[0], file, named)) from None
    loaded = _build(cls, dict(values))
    downloads = getattr(loaded, "downloads", loaded)
    if isinstance(downloads, DownloadSettings) and downloads.inflight_max < downloads.part_size:
        raise ConfigError(
            f"{named('EDGELOADER_DOWNLOAD_INFLIGHT_MAX')} must be at least "
            f"{named('EDGELOADER_DOWNLOAD_PART_SIZE', with_file=False)}"
        )
    return loaded


@cache
def _knobs(cls: type) -> _Knobs:
    """The knobs of ``cls`` and of its groups."""
    hints, knobs = get_type_hints(cls), _Knobs()
    for f in fields(cls):
        if "variable" in f.metadata:
            knobs[f.metadata["variable"]] = (hints[f.name], f)
        elif is_dataclass(hints[f.name]):
            knobs |= _knobs(hints[f.name])
    return knobs


@cache
def _model(cls: type) -> type[_Model]:
    definitions: dict[str, Any] = {}
    for variable, (hint, f) in _knobs(cls).items():
        annotation = Annotated[(hint, *f.metadata["rules"])] if f.metadata["rules"] else hint
        definitions[variable] = (annotation, ... if f.default is MISSING else f.default)
    return create_model(f"{cls.__name__}Model", __base__=_Model, **definitions)


def _build(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls`` with its knobs, and its groups', from the checked ``values``."""
    hints, kwargs = get_type_hints(cls), dict[str, Any]()
    for f in fields(cls):  # type: ignore[arg-type]
        if "variable" in f.metadata:
            kwargs[f.name] = values[f.metadata["variable"]]
        elif is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values)
    return cls(**kwargs)


def _read(path: Path, knobs: _Knobs) -> dict[str, Any]:
    """The file's values under their variables' names, its relative paths
    joined to its folder; blank values count as unset."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"configuration file {path} {problem}")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"configuration file {path} must end in .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except (ValueError, yaml.YAMLError) as exc:  # not TOML or YAML, or not UTF-8
        raise ConfigError(f"{path}: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold keys with values, like warm_max = 4")
    variables = {_key(variable): variable for variable in knobs}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in variables:
            raise ConfigError(f"{path}: unknown key {key!r}{_guess(str(key), variables)}")
        value = value.strip() if isinstance(value, str) else value
        if value != "" and value is not None:
            variable = variables[key]
            joined = knobs[variable][1].metadata["path"] and isinstance(value, str)
            values[variable] = path.parent.absolute() / value if joined else value
    return values


def _guess(key: str, keys: Collection[str]) -> str:
    """`` (did you mean 'warm_max'?)`` for a variable's name or a near miss."""
    plain = _key(key)
    close = [plain] if plain in keys else difflib.get_close_matches(plain, keys, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(error: ErrorDetails, file: Path | None, named: Callable[[str], str]) -> str:
    """The one line for pydantic's ``error``, naming the variable or the file and key."""
    variable, got = str(error["loc"][0]), error["input"]
    match error["type"]:
        case "missing":  # RESOURCE_API_URL, the one setting without a default
            where = f"; {_key(variable)} in {file}" if file else ""
            return f"{variable} is required (the Resource API base URL{where})"
        case "int_parsing" | "int_type" | "int_from_float":
            reason = f"must be a whole number, got {got!r}"
        case "float_parsing" | "float_type":
            reason = f"must be a number of seconds, got {got!r}"
        case "greater_than":
            reason = f"must be positive, got {got}"
        case "string_type":
            reason = "must be text (in quotes)"
        case "value_error":
            reason = str(error.get("ctx", {}).get("error", error["msg"]))
        case _:
            reason = error["msg"][:1].lower() + error["msg"][1:]
    return f"{named(variable)} {reason}"
