"""``edgeloader-publisher``: the publishing side's command line.

``resource-api`` runs the reference Resource API, ``add-user`` manages its
users, ``publish archive`` writes ``images.enc`` and ``publish resource``
encrypts, splits and uploads a resource. Failures, passwords and progress
follow the device CLI's one convention (``edgeloader.cli.output``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from edgeloader.publishing import (
    ARCHIVE_KEY,
    CdnOverrides,
    Progress,
    Role,
    UsageError,
    crypto,
    read_password,
    run_command,
    safe_folder,
    safe_name,
)
from edgeloader_publisher import __version__
from edgeloader_publisher.archive import encrypt_archive
from edgeloader_publisher.release import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Listed,
    Release,
    archive_artifact,
    generate_keypair,
    load_private_key,
    resource_artifact,
)
from edgeloader_publisher.resource import PublishTarget, publish_file
from edgeloader_publisher.resource_api.server import (
    KEY_FRAGMENT_FILE,
    USERS_FILE,
    ResourceApiConfig,
    create_resource_api_app,
    read_or_create_secret,
)
from edgeloader_publisher.resource_api.users import UserStore

__all__ = ["build_parser", "main"]

PROG = "edgeloader-publisher"
ENV_DATA_DIR = "EDGELOADER_RESOURCE_API_DIR"
ENV_SECRET = "EDGELOADER_RESOURCE_API_SECRET"  # noqa: S105 (a variable name)
ENV_EMAIL = "EDGELOADER_PUBLISH_EMAIL"
ENV_PASSWORD = "EDGELOADER_PUBLISH_PASSWORD"  # noqa: S105 (a variable name)
DEFAULT_DATA_DIR = "./resource-api-data"
JWT_SECRET_FILE = "jwt_secret"  # noqa: S105 (a file name)
_MIB = 1024 * 1024

log = logging.getLogger("edgeloader.resource_api")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "The publishing side of edgeloader: a reference Resource API for tests and "
            "local stacks, and the tools that encrypt and publish resources and images."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_resource_api(commands)
    _add_user(commands)
    publish = commands.add_parser(
        "publish",
        help="encrypt and publish a resource or the service images",
        description="Encrypt and publish a resource or the service images.",
    )
    kinds = publish.add_subparsers(dest="publish_kind", metavar="KIND", required=True)
    _add_publish_archive(kinds)
    _add_publish_resource(kinds)
    _add_keygen(kinds)
    _add_manifest(kinds)
    return parser


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("v1", "v2"),
        default="v2",
        help="container format: v2 is authenticated (default); v1 for Azaion-compatible fleets",
    )


def _format(args: argparse.Namespace) -> int:
    return 2 if args.format == "v2" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, args.func, args)


# -- resource-api -----------------------------------------------------------------------


def _add_resource_api(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "resource-api",
        help="run the reference Resource API",
        description=(
            "Run the reference Resource API (docs/protocol.md) for tests and local stacks. "
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


def run_resource_api(args: argparse.Namespace) -> int:
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
        raise UsageError(f"{path} is not UTF-8 text") from None


# -- add-user ---------------------------------------------------------------------------


def _add_user(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = commands.add_parser(
        "add-user",
        help="add a Resource API user, or replace its password and role",
        description=(
            "Add a user to the Resource API's store, or replace the password and role of "
            "an existing one. The password is read from stdin (--password-stdin) or "
            "prompted for on a terminal; it is never taken on the command line."
        ),
    )
    user.add_argument("email", metavar="EMAIL", help="the user's email (login name)")
    user.add_argument(
        "--role", required=True, metavar="ROLE", help=f"one of: {', '.join(Role.names())}"
    )
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin",
    )
    _add_data_dir(user)
    user.set_defaults(func=add_user)


def add_user(args: argparse.Namespace) -> int:
    if args.role not in Role.names():
        raise UsageError(f"unknown role {args.role!r} (valid: {', '.join(Role.names())})")
    password = read_password(from_stdin=args.password_stdin, confirm=True)
    data_dir = _data_dir(args)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with UserStore(data_dir / USERS_FILE) as store:
        try:
            user, replaced = store.add_user(args.email, password, args.role)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    verb = "replaced" if replaced else "added"
    print(f"{verb} user {user.email} (id {user.id}, role {user.role})")
    return 0


# -- publish archive --------------------------------------------------------------------


def _add_publish_archive(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    archive = kinds.add_parser(
        "archive",
        help="encrypt a `docker save` archive into images.enc",
        description=(
            "Encrypt a `docker save` archive into images.enc under SHA256(key fragment), "
            "in format v2 unless --format v1. The output appears complete or not at all."
        ),
    )
    _add_format(archive)
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


def publish_archive(args: argparse.Namespace) -> int:
    src: Path = args.image
    dst: Path = args.output
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    if dst.is_dir() or not dst.parent.is_dir():
        raise UsageError(f"{dst}: not a writable file path")
    fragment = _read_fragment(getattr(args, "fragment_file", None), _data_dir(args))
    progress = Progress("encrypted", src.stat().st_size)
    try:
        size = asyncio.run(encrypt_archive(src, dst, fragment, progress.advance, _format(args)))
    finally:
        progress.close()
    print(f"wrote {dst} ({size} bytes)")
    return 0


def _read_fragment(fragment_file: Path | None, data_dir: Path) -> bytes:
    path = fragment_file or data_dir / KEY_FRAGMENT_FILE
    try:
        fragment = path.read_bytes()
    except FileNotFoundError:
        hint = "" if fragment_file else " (start the resource-api once, or pass --fragment-file)"
        raise UsageError(f"{path}: no key fragment{hint}") from None
    if not fragment:
        raise UsageError(f"{path}: the key fragment is empty")
    return fragment


# -- publish resource -------------------------------------------------------------------


def _add_publish_resource(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = kinds.add_parser(
        "resource",
        help="encrypt, split and upload a resource (big part to the CDN, small part to the API)",
        description=(
            "Encrypt FILE under the resource key, upload the big part to the CDN bucket "
            "FOLDER and then the small part to the Resource API; if the small part cannot "
            "be posted, the big part is removed again. Needs RESOURCE_API_URL (or "
            f"--api-url) and an uploader account: --email or ${ENV_EMAIL}; the password "
            f"from stdin (--password-stdin), ${ENV_PASSWORD} or a prompt. "
            "EDGELOADER_CDN_* settings override the API's cdn.yaml."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the resource to publish")
    _add_format(parser)
    parser.add_argument("--folder", default="models", help="folder / bucket (default: models)")
    parser.add_argument("--name", help="resource name (default: the file's name)")
    _add_account(parser)
    parser.set_defaults(func=publish_resource)


def _add_account(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="Resource API base URL (default: $RESOURCE_API_URL)")
    parser.add_argument("--email", help=f"uploader's email (default: ${ENV_EMAIL})")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )


def _target(args: argparse.Namespace) -> PublishTarget:
    """The Resource API account from the flags, the environment or a prompt."""
    email = args.email or os.environ.get(ENV_EMAIL)
    if not email:
        raise UsageError(f"no uploader account: use --email or ${ENV_EMAIL}")
    api_url = args.api_url or os.environ.get("RESOURCE_API_URL")
    if not api_url:
        raise UsageError("no Resource API: use --api-url or $RESOURCE_API_URL")
    password = read_password(from_stdin=args.password_stdin, env_var=ENV_PASSWORD)
    return PublishTarget(api_url, email, password, CdnOverrides.from_env(os.environ))


def publish_resource(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    name = safe_name(args.name or path.name)
    folder = safe_folder(args.folder)
    target = _target(args)
    progress = Progress("uploaded", path.stat().st_size)
    try:
        done = asyncio.run(
            publish_file(target, path, folder, name, progress.advance, _format(args))
        )
    finally:
        progress.close()
    print(f"published {folder}/{name}: {done.plaintext_bytes} bytes")
    return 0


# -- publish keygen / manifest ----------------------------------------------------------


def _add_keygen(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = kinds.add_parser(
        "keygen",
        help="create the publisher's Ed25519 key pair",
        description=(
            f"Write a new Ed25519 key pair into DIR: {PRIVATE_KEY_FILE} (0600; keep it off "
            f"the boxes) and {PUBLIC_KEY_FILE} (give it to the boxes as "
            "EDGELOADER_PUBLISHER_KEY). An existing private key is never overwritten."
        ),
    )
    keygen.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="folder")
    keygen.set_defaults(func=keygen_command)


def keygen_command(args: argparse.Namespace) -> int:
    try:
        private, public = generate_keypair(args.out)
    except FileExistsError:
        raise UsageError(f"{args.out / PRIVATE_KEY_FILE} exists; not overwriting it") from None
    print(f"wrote {private} (private, 0600) and {public} (for EDGELOADER_PUBLISHER_KEY)")
    return 0


def _add_manifest(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    manifest = kinds.add_parser(
        "manifest",
        help="write and sign the release manifest",
        description=(
            "Compute the SHA-256, size, format and segment list of each artifact's "
            "ciphertext, write manifest.json with VERSION and an expiry, sign it with KEY, "
            "and store both files in the Resource API's data folder (--data-dir), where it "
            "serves them, or in --out. Resources are read back from the Resource API and "
            "the CDN as a box reads them (account options as for `publish resource`), and "
            "their segment lists are uploaded beside their small parts; the archive's list "
            "is written beside the manifest as images.enc.segments. Run it again over an "
            "existing release to add segment lists without encrypting anything again."
        ),
    )
    manifest.add_argument("--key", type=Path, required=True, help="the private key (PEM)")
    manifest.add_argument(
        "--version", type=int, required=True, help="release version, >= 1; boxes never go back"
    )
    manifest.add_argument(
        "--valid-days", type=float, default=30.0, help="days until it expires (default: 30)"
    )
    manifest.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="FOLDER/NAME",
        help="a published resource (repeatable)",
    )
    manifest.add_argument(
        "--archive", type=Path, metavar="IMAGES.enc", help="the encrypted image archive"
    )
    manifest.add_argument(
        "--segment",
        type=_segment_size,
        default=crypto.SEGMENT_DEFAULT,
        metavar="BYTES",
        help="segment size of the segment lists: a power of two from 64 KiB to 16 MiB "
        "(default: 1 MiB)",
    )
    place = manifest.add_mutually_exclusive_group(required=True)
    place.add_argument("--data-dir", type=Path, help="the reference Resource API's data folder")
    place.add_argument("--out", type=Path, metavar="DIR", help="write the two files here")
    _add_account(manifest)
    manifest.set_defaults(func=manifest_command)


def _segment_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if not crypto.SEGMENT_MIN <= value <= crypto.SEGMENT_MAX or value & (value - 1):
        raise argparse.ArgumentTypeError("must be a power of two from 65536 to 16777216")
    return value


def manifest_command(args: argparse.Namespace) -> int:
    if args.version < 1:
        raise UsageError("--version must be 1 or more")
    if args.valid_days <= 0:
        raise UsageError("--valid-days must be positive")
    if not args.resource and args.archive is None:
        raise UsageError("nothing to list: give --resource FOLDER/NAME and/or --archive FILE")
    if args.archive is not None and not args.archive.is_file():
        raise UsageError(f"{args.archive}: no such file")
    resources = []
    for entry in args.resource:
        folder, _, name = entry.partition("/")
        resources.append((safe_folder(folder), safe_name(name)))
    key = load_private_key(args.key)
    target = _target(args) if resources else None

    async def collect() -> dict[str, Listed]:
        found = {}
        if args.archive is not None:
            found[ARCHIVE_KEY] = await archive_artifact(args.archive, args.segment)
        for folder, name in resources:
            assert target is not None
            found[f"{folder}/{name}"] = await resource_artifact(target, folder, name, args.segment)
        return found

    listed = asyncio.run(collect())
    artifacts = {key: entry.artifact for key, entry in listed.items()}
    # The archive's list goes beside the manifest; resources' lists went to
    # the Resource API beside their small parts.
    lists = {}
    if ARCHIVE_KEY in listed:
        lists[crypto.segments_name(ARCHIVE_KEY)] = listed[ARCHIVE_KEY].segments
    expires = datetime.now(UTC) + timedelta(days=args.valid_days)
    release = Release(args.version, expires.replace(microsecond=0), artifacts)
    manifest, signature = release.write(key, args.data_dir or args.out, lists)
    print(f"wrote {manifest} (version {args.version}, {len(artifacts)} artifacts) and {signature}")
    return 0
