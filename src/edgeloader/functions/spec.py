"""The fields of a function, declared once (docs/functions.md, "Fields").

These models validate deploy, update and build bodies inside the service
(so that a refused deploy is audited like any other), are stored as the
function's version, and make the OpenAPI document. A name that could not
be part of an image name is 400 (``UnsafeName``); a missing, mistyped,
out-of-range or unknown field is 422 naming the field. Nothing here can
weaken a run's isolation: these are the only knobs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict, JsonValue

from edgeloader.errors import UnsafeName
from edgeloader.names import safe_folder, safe_name
from edgeloader.wire import StrictBody, validate

__all__ = [
    "ENV_NAME",
    "IMAGE",
    "MODELS_DIR",
    "NAME",
    "NAME_SCHEMA",
    "RESERVED_ENV",
    "FunctionOptions",
    "FunctionSpec",
    "Limits",
    "ModelBinding",
    "function_name",
    "parse_spec",
]

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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
RESERVED_ENV = frozenset({"EDGELOADER_RUN_ID", "EDGELOADER_FUNCTION", "EDGELOADER_MODELS"})
MAX_MODELS = 8
#: Where a run finds its models: ``MODELS_DIR/FOLDER/NAME``.
MODELS_DIR = "/models"
MAX_COMMAND_ITEMS = 256
MAX_ENV_ITEMS = 256
MAX_STRING = 8192

#: How a function's name is documented; ``function_name`` refuses others with 400.
NAME_SCHEMA: JsonDict = {
    "pattern": f"^{NAME.pattern}$",
    "description": "becomes part of an image name; else 400",
}
_NO_NUL = "^[^\\x00]*$"
_ENV_SCHEMA: JsonDict = {
    "type": "object",
    "maxProperties": MAX_ENV_ITEMS,
    "propertyNames": {
        "pattern": f"^{ENV_NAME.pattern}$",
        "maxLength": MAX_STRING,
        "not": {"enum": list[JsonValue](sorted(RESERVED_ENV))},
    },
    "additionalProperties": {
        "type": "string",
        "maxLength": MAX_STRING,
        "pattern": "^[^\\x00\\r\\n]*$",
    },
}

_Text = Annotated[str, Field(max_length=MAX_STRING, pattern=_NO_NUL)]
_EnvName = Annotated[str, Field(max_length=MAX_STRING, pattern=f"^{ENV_NAME.pattern}$")]
_EnvValue = Annotated[str, Field(max_length=MAX_STRING, pattern="^[^\\x00\\r\\n]*$")]


class _Spec(StrictBody):
    model_config = ConfigDict(frozen=True)


class Limits(_Spec):
    """Each one optional, merged over the defaults."""

    memory_mb: int = Field(128, ge=16, le=4096, description="no swap is added")
    cpus: float = Field(0.5, ge=0.05, allow_inf_nan=False, description="at most the box's cores")
    pids: int = Field(64, ge=8, le=4096)
    timeout_s: int = Field(30, ge=1, le=3600)
    tmpfs_mb: int = Field(16, ge=1, le=1024, description="`/tmp`, `/dev/shm` and image volumes")
    disk_mb: int = Field(
        16, ge=1, le=1024, description="the run folder, a tmpfs: writes past it fail (ENOSPC)"
    )

    # Both checks run where a request is validated (the service passes the
    # box's cores), not when a stored version is read back.

    @field_validator("cpus")
    @classmethod
    def _within_the_box(cls, value: float, info: ValidationInfo) -> float:
        cores = (info.context or {}).get("cores")
        if cores is not None and value > cores:
            raise ValueError(f"must be at most {cores:g}, the box's cores")
        return value

    @model_validator(mode="after")
    def _in_memory(self, info: ValidationInfo) -> Limits:
        # The run folder and /tmp are tmpfs mounts whose pages are charged
        # to the container's memory.
        if info.context and self.disk_mb + self.tmpfs_mb > self.memory_mb:
            raise ValueError(
                f"diskMb + tmpfsMb ({self.disk_mb + self.tmpfs_mb}) must not exceed "
                f"memoryMb ({self.memory_mb}): the run folder and /tmp live in its memory"
            )
        return self


class ModelBinding(_Spec):
    """A model a run finds, verified and decrypted, at ``/models/FOLDER/NAME``
    (docs/functions.md, "Models"); the names follow ``/load``'s rules."""

    folder: str = Field(description="the resource's folder, as for POST /load")
    name: str = Field(description="the resource's name, as for POST /load")

    @field_validator("folder")
    @classmethod
    def _folder(cls, folder: str) -> str:
        return safe_folder(folder)  # 400, as for /load

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return safe_name(name, "name")

    @property
    def target(self) -> str:
        return f"{MODELS_DIR}/{self.folder}/{self.name}"

    def __str__(self) -> str:
        return f"{self.folder}/{self.name}"


class Warm(_Spec):
    """Keep containers running between invokes (docs/functions.md, "Warm
    functions"): at most ``max`` of them, each removed ``idleS`` after its
    last invoke."""

    max: int = Field(1, ge=1, le=8, description="warm containers at most; at most concurrency")
    idle_s: int = Field(60, ge=5, le=3600, description="seconds an idle one is kept")


class FunctionOptions(_Spec):
    """A function's settings but its image: a build's ``spec``."""

    command: list[_Text] | None = Field(
        None, min_length=1, max_length=MAX_COMMAND_ITEMS, description="the image's own"
    )
    env: Annotated[dict[_EnvName, _EnvValue], WithJsonSchema(_ENV_SCHEMA)] = Field(
        default_factory=dict,
        max_length=MAX_ENV_ITEMS,
        description="never returned; EDGELOADER_RUN_ID and EDGELOADER_FUNCTION are the loader's",
    )
    limits: Limits = Field(default_factory=Limits)
    concurrency: int = Field(1, ge=1, le=16, description="runs at once")
    queue: int = Field(8, ge=0, le=256, description="more that may wait")
    user: int = Field(65534, ge=1, le=65535, description="uid and gid, never 0")
    models: list[ModelBinding] = Field(
        default_factory=list,
        max_length=MAX_MODELS,
        description="models each run finds read-only at /models/FOLDER/NAME",
    )
    warm: Warm | None = Field(None, description="absent: every run is a fresh container")

    @field_validator("warm")
    @classmethod
    def _warm_within_concurrency(cls, warm: Warm | None, info: ValidationInfo) -> Warm | None:
        concurrency = info.data.get("concurrency")
        if warm is not None and concurrency is not None and warm.max > concurrency:
            raise ValueError(f"warm.max ({warm.max}) must not exceed concurrency ({concurrency})")
        return warm

    @property
    def runs_at_once(self) -> int:
        """Runs of this function at once: a warm function's never exceed
        its warm containers (invokes beyond them wait in the queue)."""
        return self.warm.max if self.warm is not None else self.concurrency

    @field_validator("models")
    @classmethod
    def _once_each(cls, models: list[ModelBinding]) -> list[ModelBinding]:
        targets = [m.target for m in models]
        for target in targets:
            if targets.count(target) > 1:
                raise ValueError(f"{target} is bound twice")
        return models

    @field_validator("env")
    @classmethod
    def _not_ours(cls, env: dict[str, str]) -> dict[str, str]:
        reserved = sorted(RESERVED_ENV & env.keys())
        if reserved:
            raise ValueError(f"{reserved[0]} is set by the loader")
        return env


class FunctionSpec(FunctionOptions):
    """One version of a function: what to run and within which limits."""

    image: str = Field(
        max_length=MAX_IMAGE,
        json_schema_extra={"pattern": f"^{IMAGE.pattern}$"},
        description="an image in the engine",
    )

    @field_validator("image")
    @classmethod
    def _reference(cls, image: str) -> str:
        if not IMAGE.fullmatch(image):
            raise ValueError("must be an image reference: [registry/]name[:tag][@digest], or an ID")
        return image


def function_name(value: object) -> str:
    """A function's name, which becomes part of an image name, else 400."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UnsafeName(
            f"unsafe function name {value!r}: 1-63 of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return value


def parse_spec(
    body: Mapping[str, Any], *, with_image: bool = True, cores: float | None = None
) -> FunctionSpec:
    """A function version from a request body (``name`` already taken out).

    ``with_image`` False is a build's ``spec``: the image is the build's
    own, left empty here. Omitted fields take their defaults.
    """
    box = float(cores or os.cpu_count() or 1)
    if with_image:
        return validate(FunctionSpec, dict(body), cores=box)
    options = validate(FunctionOptions, dict(body), cores=box)
    return FunctionSpec.model_construct(image="", **dict(options))
