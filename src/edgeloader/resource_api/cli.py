"""Command-line face of the publishing side: ``resource-api``, ``add-user``, ``publish``.

``add_subcommands`` registers the commands on the top-level parser; each sets
``func`` to a handler that takes the parsed namespace and returns an exit
code. Bad input gives one line on stderr and exit code 2; an OS failure
while working gives exit code 1.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import logging
import os
import secrets
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from aiohttp import web

from edgeloader.errors import ConfigError
from edgeloader.resource_api.publish import encrypt_archive
from edgeloader.resource_api.server import (
    KEY_FRAGMENT_FILE,
    USERS_FILE,
    ResourceApiConfig,
    create_resource_api_app,
    read_or_create_secret,
)
from edgeloader.resource_api.users import ROLES, UserStore

__all__ = [
    "ENV_DATA_DIR",
    "ENV_SECRET",
    "add_subcommands",
    "add_user",
    "publish_archive",
    "run_resource_api",
]

ENV_DATA_DIR = "EDGELOADER_RESOURCE_API_DIR"
ENV_SECRET = "EDGELOADER_RESOURCE_API_SECRET"  # noqa: S105 (a variable name)
DEFAULT_DATA_DIR = "./resource-api-data"
JWT_SECRET_FILE = "jwt_secret"  # noqa: S105 (a file name)
_PROGRESS_MIN_BYTES = 16 * 1024 * 1024
_MIB = 1024 * 1024

log = logging.getLogger("edgeloader.resource_api")

Handler = Callable[[argparse.Namespace], int]


class _UsageError(Exception):
    """Bad input: reported as one line, exit code 2."""


def _handler(func: Handler) -> Handler:
    """Turns expected failures into one stderr line and an exit code."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (_UsageError, ConfigError) as exc:
            return _fail(str(exc), 2)
        except (OSError, sqlite3.Error) as exc:
            return _fail(_os_message(exc), 1)
        except KeyboardInterrupt:
            return 130

    return wrapper


def _fail(message: str, code: int) -> int:
    print(f"edgeloader: error: {message}", file=sys.stderr)
    return code


def _os_message(exc: OSError | sqlite3.Error) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _data_dir(args: argparse.Namespace) -> Path:
    value = getattr(args, "data_dir", None) or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    return Path(value)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"the Resource API's data folder (default: ${ENV_DATA_DIR} or {DEFAULT_DATA_DIR})",
    )


def add_subcommands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Registers ``resource-api``, ``add-user`` and ``publish archive``.

    Returns the ``publish`` kinds, so other kinds can be added beside it.
    """
    serve = subparsers.add_parser(
        "resource-api",
        help="run the reference Resource API",
        description=(
            "Run the reference Resource API (DESIGN §3) for tests and the local stack. "
            f"The JWT secret comes from ${ENV_SECRET}, else from DIR/{JWT_SECRET_FILE}, "
            "which is generated on first start."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8090, help="port to bind (default: %(default)s)")
    _add_data_dir(serve)
    serve.add_argument(
        "--token-lifetime",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of issued tokens (default: %(default)s)",
    )
    serve.add_argument(
        "--max-upload-bytes",
        type=int,
        default=64 * _MIB,
        metavar="N",
        help="largest accepted upload (default: %(default)s)",
    )
    serve.set_defaults(func=run_resource_api)

    user = subparsers.add_parser(
        "add-user",
        help="add a Resource API user, or replace its password and role",
        description=(
            "Add a user to the Resource API's store, or replace the password and role of "
            "an existing one. The password is read from stdin (--password-stdin) or "
            "prompted for on a terminal; it is never taken on the command line."
        ),
    )
    user.add_argument("email", metavar="EMAIL", help="the user's email (login name)")
    user.add_argument("--role", required=True, metavar="ROLE", help=f"one of: {', '.join(ROLES)}")
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin",
    )
    _add_data_dir(user)
    user.set_defaults(func=add_user)

    publish = subparsers.add_parser(
        "publish",
        help="encrypt artefacts for publishing",
        description="Encrypt artefacts for publishing.",
    )
    kinds = publish.add_subparsers(dest="publish_kind", metavar="KIND", required=True)
    archive = kinds.add_parser(
        "archive",
        help="encrypt a `docker save` archive into images.enc",
        description=(
            "Encrypt a `docker save` archive into images.enc (format v1 under "
            "SHA256(key fragment)). The output appears complete or not at all."
        ),
    )
    archive.add_argument("image", type=Path, metavar="IMAGE.tar", help="the archive to encrypt")
    archive.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="where to write"
    )
    source = archive.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"take the key fragment from DIR/{KEY_FRAGMENT_FILE} "
        f"(default: ${ENV_DATA_DIR} or {DEFAULT_DATA_DIR})",
    )
    source.add_argument(
        "--fragment-file", type=Path, metavar="FILE", help="take the key fragment from FILE"
    )
    archive.set_defaults(func=publish_archive)
    return kinds


@_handler
def run_resource_api(args: argparse.Namespace) -> int:
    """``edgeloader resource-api``: serves until interrupted."""
    data_dir = _data_dir(args)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = os.environ.get(ENV_SECRET) or _stored_secret(data_dir / JWT_SECRET_FILE)
    config = ResourceApiConfig(
        data_dir=data_dir,
        jwt_secret=secret,
        token_lifetime=args.token_lifetime,
        max_upload_bytes=args.max_upload_bytes,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("data in %s", data_dir.resolve())
    web.run_app(
        create_resource_api_app(config),
        host=args.host,
        port=args.port,
        access_log=None,
        print=log.info,
    )
    return 0


def _stored_secret(path: Path) -> str:
    raw = read_or_create_secret(path, lambda: secrets.token_urlsafe(48).encode())
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        raise _UsageError(f"{path} is not UTF-8 text") from None


@_handler
def add_user(args: argparse.Namespace) -> int:
    """``edgeloader add-user``: adds or replaces one user."""
    if args.role not in ROLES:
        raise _UsageError(f"unknown role {args.role!r} (valid: {', '.join(ROLES)})")
    password = _read_password(args.password_stdin, sys.stdin)
    data_dir = _data_dir(args)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with UserStore(data_dir / USERS_FILE) as store:
        try:
            user, replaced = store.add_user(args.email, password, args.role)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
    verb = "replaced" if replaced else "added"
    print(f"{verb} user {user.email} (id {user.id}, role {user.role})")
    return 0


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise _UsageError("the passwords do not match")
    else:
        raise _UsageError("no password: pass --password-stdin or run on a terminal")
    if not password:
        raise _UsageError("the password must not be empty")
    return password


@_handler
def publish_archive(args: argparse.Namespace) -> int:
    """``edgeloader publish archive``: writes images.enc."""
    src: Path = args.image
    dst: Path = args.output
    if not src.is_file():
        raise _UsageError(f"{src}: no such file")
    if dst.is_dir() or not dst.parent.is_dir():
        raise _UsageError(f"{dst}: not a writable file path")
    fragment = _read_fragment(getattr(args, "fragment_file", None), _data_dir(args))
    total = src.stat().st_size
    progress = _Progress(sys.stderr) if total >= _PROGRESS_MIN_BYTES else None
    try:
        size = encrypt_archive(src, dst, fragment, progress)
    finally:
        if progress is not None:
            progress.close()
    print(f"wrote {dst} ({size} bytes)")
    return 0


def _read_fragment(fragment_file: Path | None, data_dir: Path) -> bytes:
    path = fragment_file or data_dir / KEY_FRAGMENT_FILE
    try:
        fragment = path.read_bytes()
    except FileNotFoundError:
        hint = "" if fragment_file else " (start the resource-api once, or pass --fragment-file)"
        raise _UsageError(f"{path}: no key fragment{hint}") from None
    if not fragment:
        raise _UsageError(f"{path}: the key fragment is empty")
    return fragment


class _Progress:
    """Prints ``done / total MiB`` at every 5%, in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        step = done * 20 // total if total else 20
        if step == self._shown:
            return
        self._shown = step
        line = f"encrypted {done / _MIB:.0f} / {total / _MIB:.0f} MiB ({step * 5}%)"
        print(f"\r{line}" if self._tty else line, end="" if self._tty else "\n", file=self._stream)
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            print(file=self._stream)
