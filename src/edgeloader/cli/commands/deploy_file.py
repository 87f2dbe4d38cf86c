"""What ``fn deploy`` sends: a deploy file (YAML or JSON, one function, in
the API's field names), then the command line's flags over it
(docs/cli.md, "Functions").

A file names what the API takes and nothing else: an unknown key, at any
depth, is refused here with the key and the file, before anything is sent.
The keys are read from the declarations in ``functions/spec.py``, so the
two cannot drift; ranges are the service's to check.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from edgeloader.cli.output import UsageError
from edgeloader.functions.spec import FunctionOptions, Limits, ModelBinding, Warm

__all__ = ["LIMIT_FLAGS", "Deployment", "deployment", "limit_help", "option_help", "warm_help"]

JSON = dict[str, Any]

#: Flag (its ``dest``) → the field of ``Limits`` it sets.
LIMIT_FLAGS = {
    "memory_mb": "memory_mb",
    "cpus": "cpus",
    "pids": "pids",
    "timeout": "timeout_s",
    "tmpfs_mb": "tmpfs_mb",
    "disk_mb": "disk_mb",
}
#: Keys of a deploy file that are not fields of a function's settings.
SOURCE_KEYS = ("name", "image", "context")


def _keys(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def _bounds(model: type[BaseModel], name: str) -> str:
    """``16-4096, default 128`` from the field's declaration."""
    info = model.model_fields[name]
    low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    if low is not None and high is not None:
        span = f"{low:g}-{high:g}"
    elif low is not None:  # bounded above by the box (cpus)
        span = f"at least {low:g}, {info.description}" if info.description else f"{low:g}-"
    else:
        span = "any"
    return f"{span}; default {info.default:g}"


def limit_help(name: str, what: str = "") -> str:
    """A limit flag's help: what it is, its range and its default."""
    bounds = _bounds(Limits, name)
    return f"{what} ({bounds})" if what else f"({bounds})"


def warm_help(name: str) -> str:
    """The range and default of a field of ``warm``."""
    return _bounds(Warm, name)


def option_help(name: str, what: str) -> str:
    """The help of a flag for a field of ``FunctionOptions``."""
    return f"{what} ({_bounds(FunctionOptions, name)})"


@dataclass(frozen=True)
class Deployment:
    """A deploy as the command line and the file give it."""

    name: str
    spec: JSON  # the fields but the image
    image: str | None
    context: Path | None


def _read(path: Path) -> JSON:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    try:
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{path}: not {kind}: {first}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: must hold a mapping of the deploy's fields")
    _check_keys(path, loaded)
    return loaded


def _check_keys(path: Path, loaded: JSON) -> None:
    def unknown(where: str, value: Any, known: set[str]) -> None:
        if isinstance(value, dict):
            for key in value:
                if key not in known:
                    raise UsageError(f"{path}: unknown key {where}{key!r}")

    unknown("", loaded, _keys(FunctionOptions) | set(SOURCE_KEYS))
    unknown("limits.", loaded.get("limits"), _keys(Limits))
    unknown("warm.", loaded.get("warm"), _keys(Warm))
    for n, model in enumerate(loaded.get("models") or []):
        unknown(f"models[{n}].", model, _keys(ModelBinding))


def _model(item: Any, where: str) -> Any:
    """``FOLDER/NAME`` as a binding; a mapping as it is (the service checks it)."""
    if not isinstance(item, str):
        return item
    folder, sep, name = item.partition("/")
    if not sep or not folder or not name:
        raise UsageError(f"{where}: expected FOLDER/NAME, got {item!r}")
    return {"folder": folder, "name": name}


def _warm(text: str) -> JSON:
    most, _, idle = text.partition(":")
    try:
        warm: JSON = {"max": int(most)}
        if idle:
            warm["idleS"] = int(idle)
    except ValueError:
        raise UsageError(f"--warm: expected MAX or MAX:IDLE_S, got {text!r}") from None
    return warm


def _command(text: str, where: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None


def deployment(args: argparse.Namespace) -> Deployment:
    """The file's fields (if any), then the flags over them."""
    spec: JSON = {}
    path: Path | None = args.file
    if path is not None:
        spec = _read(path)
        if isinstance(spec.get("command"), str):
            spec["command"] = _command(spec["command"], f"{path}: command")
        if isinstance(spec.get("models"), list):
            spec["models"] = [_model(m, f"{path}: models") for m in spec["models"]]
    file_name = spec.pop("name", None)
    file_image = spec.pop("image", None)
    file_context = spec.pop("context", None)
    name = args.name or file_name
    if not isinstance(name, str) or not name:
        raise UsageError("NAME is missing: give it, or `name:` in the deploy file")
    image, context = args.image, args.context
    if image is None and context is None:  # the file's source, unless a flag gives one
        if file_image is not None and file_context is not None:
            raise UsageError(f"{path}: give image or context, not both")
        if isinstance(file_context, str):
            assert path is not None
            context = path.parent / file_context  # relative to the file
        elif isinstance(file_image, str):
            image = file_image
        else:
            raise UsageError("give --image or --context (or image or context in a deploy file)")
    if args.command is not None:
        spec["command"] = _command(args.command, "--command")
    if args.env:
        env = dict(spec.get("env") or {})
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--env: expected KEY=VALUE, got {item!r}")
            env[key] = value
        spec["env"] = env
    limits = dict(spec.get("limits") or {})
    for flag, field in LIMIT_FLAGS.items():
        if getattr(args, flag) is not None:
            limits[Limits.model_fields[field].alias or field] = getattr(args, flag)
    if limits:
        spec["limits"] = limits
    for option in ("concurrency", "queue", "user"):
        if getattr(args, option) is not None:
            spec[option] = getattr(args, option)
    if args.model:
        spec["models"] = [_model(item, "--model") for item in args.model]
    if args.warm is not None:
        spec["warm"] = _warm(args.warm)
    return Deployment(name, spec, image, context)
