"""The fields of a function, checked as DESIGN §8 states them.

A name that could not be part of an image name is 400 (``UnsafeName``); a
missing, mistyped, out-of-range or unknown field is 422 naming the field.
Nothing here can weaken a run's isolation: these are the only knobs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeloader.errors import UnsafeName, ValidationFailed

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A repository, an optional tag and an optional digest; no spaces or shell.
# An image reference as the engines parse it: an optional registry (with a
# port), lower-case path components, an optional tag and digest; or an ID.
_DOMAIN = (
    r"(?:localhost|[A-Za-z0-9-]+:[0-9]+"
    r"|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
    r"(?::[0-9]+)?)"
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE = re.compile(
    rf"(?:(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?"
    r"|sha256:[0-9a-f]{64}|[0-9a-f]{12,64})"
)
MAX_IMAGE = 255
# Set by the loader for every run; a function may not define them.
RESERVED_ENV = frozenset({"EDGELOADER_RUN_ID", "EDGELOADER_FUNCTION"})
MAX_COMMAND_ITEMS = 256
MAX_ENV_ITEMS = 256
MAX_STRING = 8192


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 128
    cpus: float = 0.5
    pids: int = 64
    timeout_s: int = 30
    tmpfs_mb: int = 16

    def as_json(self) -> dict[str, Any]:
        return {
            "memoryMb": self.memory_mb,
            "cpus": self.cpus,
            "pids": self.pids,
            "timeoutS": self.timeout_s,
            "tmpfsMb": self.tmpfs_mb,
        }


@dataclass(frozen=True)
class FunctionSpec:
    """One version of a function: what to run and within which limits."""

    image: str
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    concurrency: int = 1
    queue: int = 8
    user: int = 65534


# Integer fields: body name, attribute, lowest, highest.
_LIMITS: tuple[tuple[str, str, int, int], ...] = (
    ("memoryMb", "memory_mb", 16, 4096),
    ("pids", "pids", 8, 4096),
    ("timeoutS", "timeout_s", 1, 3600),
    ("tmpfsMb", "tmpfs_mb", 1, 1024),
)
_SPEC_FIELDS = ("image", "command", "env", "limits", "concurrency", "queue", "user")


def function_name(value: object) -> str:
    """A function's name, which becomes part of an image name, else 400."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UnsafeName(
            f"unsafe function name {value!r}: 1-63 of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return value


def parse_spec(
    body: Mapping[str, Any], *, with_image: bool = True, cores: int | None = None
) -> FunctionSpec:
    """A function version from a request body (``name`` already taken out).

    ``with_image`` False is a build's ``spec``, where the image is the
    build's own. Omitted fields take their defaults.
    """
    allowed = _SPEC_FIELDS if with_image else _SPEC_FIELDS[1:]
    _no_unknown(body, allowed, "")
    image = ""
    if with_image:
        image = body.get("image")  # type: ignore[assignment]
        if not isinstance(image, str) or len(image) > MAX_IMAGE or not IMAGE.fullmatch(image):
            raise ValidationFailed("field 'image' is required: an image reference")
    return FunctionSpec(
        image=image,
        command=_command(body.get("command")),
        env=_env(body.get("env")),
        limits=parse_limits(body.get("limits"), cores=cores),
        concurrency=_integer(body, "concurrency", 1, 16, FunctionSpec.concurrency),
        queue=_integer(body, "queue", 0, 256, FunctionSpec.queue),
        user=_integer(body, "user", 1, 65535, FunctionSpec.user),
    )


def parse_limits(value: object, *, cores: int | None = None) -> Limits:
    """``limits``: each one optional, merged over the defaults."""
    if value is None:
        return Limits()
    if not isinstance(value, dict):
        raise ValidationFailed("field 'limits' must be an object")
    _no_unknown(value, ("cpus", *(name for name, *_ in _LIMITS)), "limits.")
    values: dict[str, Any] = {}
    for name, attribute, low, high in _LIMITS:
        values[attribute] = _integer(value, name, low, high, getattr(Limits, attribute), "limits.")
    top = float(cores or os.cpu_count() or 1)
    cpus = value.get("cpus", Limits.cpus)
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not 0.05 <= cpus <= top:
        raise ValidationFailed(f"field 'limits.cpus' must be a number from 0.05 to {top:g}")
    return Limits(cpus=float(cpus), **values)


def _no_unknown(body: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in body:
        if key not in allowed:
            raise ValidationFailed(f"unknown field '{prefix}{key}'")


def _integer(
    body: Mapping[str, Any], name: str, low: int, high: int, default: int, prefix: str = ""
) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationFailed(
            f"field '{prefix}{name}' must be a whole number from {low} to {high}"
        )
    return value


def _command(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_COMMAND_ITEMS
        or not all(isinstance(item, str) and _plain(item) for item in value)
    ):
        raise ValidationFailed(
            f"field 'command' must be an array of 1-{MAX_COMMAND_ITEMS} strings without NUL"
        )
    return tuple(value)


def _env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ENV_ITEMS:
        raise ValidationFailed(
            f"field 'env' must be an object of at most {MAX_ENV_ITEMS} string values"
        )
    for key, item in value.items():
        if not ENV_NAME.fullmatch(key) or len(key) > MAX_STRING:
            raise ValidationFailed(f"field 'env': invalid variable name {key!r}")
        if key in RESERVED_ENV:
            raise ValidationFailed(f"field 'env': {key} is set by the loader")
        if not isinstance(item, str) or not _plain(item) or "\r" in item or "\n" in item:
            raise ValidationFailed(f"field 'env.{key}' must be a string without CR, LF or NUL")
    return dict(value)


def _plain(text: str) -> bool:
    return "\0" not in text and len(text) <= MAX_STRING
