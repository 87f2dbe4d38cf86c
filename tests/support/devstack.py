"""``make run``: a complete local stack on one machine, no outside service.

- moto's S3 server as the CDN,
- the reference Resource API with a demo user,
- a private engine service, when the engine is installed: podman's by
  default, Docker's with ``--engine docker`` (or ``EDGELOADER_DEV_ENGINE=docker
  make run``),
- a published sample resource and a sample image archive,
- then the loader in the foreground, until Ctrl-C.

State lives in ``.state/devstack`` and is reused between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from edgeloader import logs
from edgeloader.cli.client import DEFAULT_URL
from edgeloader.config import Settings
from edgeloader.errors import EdgeloaderError
from edgeloader.roles import Role
from edgeloader_publisher.archive import encrypt_archive
from edgeloader_publisher.resource import PublishTarget, publish_file
from edgeloader_publisher.resource_api.server import (
    KEY_FRAGMENT_FILE,
    ResourceApiConfig,
    read_or_create_secret,
)
from tests.support import docker, podman
from tests.support.engines import (
    EngineKind,
    EngineService,
    import_busybox_image,
    remove_image,
    save_images,
)
from tests.support.harness.loader import serve_loader
from tests.support.harness.resource_api import User, serve_resource_api, write_api_data
from tests.support.harness.s3 import create_bucket, s3_server

log = logging.getLogger("edgeloader.devstack")

DEMO_EMAIL = "demo@edgeloader.local"
DEMO_PASSWORD = "demo-password"
FOLDER = "models"
SAMPLE = "sample-model.bin"
DEMO_SERVICE = "localhost/edgeloader-demo"


def _sample_archive(state: Path, fragment: bytes, kind: EngineKind) -> EngineService | None:
    """Builds a demo image in the engine and encrypts it as images.enc."""
    service: EngineService
    if kind == "docker":
        if not docker.available():
            log.warning("docker.io not installed: no engine and no sample archive (`make engine`)")
            return None
        service = docker.DockerService(state / "docker")
    else:
        if not podman.available():
            log.warning("podman not installed: no engine and no sample archive (`make engine`)")
            return None
        service = podman.PodmanService(state / "podman")
    service.start()
    try:
        ref = f"{DEMO_SERVICE}:latest"
        import_busybox_image(service, ref)
        tar = save_images(service, [ref], state / "images.tar")
        asyncio.run(encrypt_archive(tar, state / "images.enc", fragment))
        tar.unlink()
        remove_image(service, ref)  # so that /unlock has something to do
        # A base image for the functions docs/functions.md builds, with no registry.
        import_busybox_image(service, FUNCTION_BASE)
    except BaseException:
        service.stop()
        raise
    return service


#: The base image of docs/functions.md's examples (busybox, nothing else).
FUNCTION_BASE = "localhost/edgeloader-fn-busybox:latest"


async def run(args: argparse.Namespace) -> None:
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        s3 = stack.enter_context(s3_server(args.s3_port))
        create_bucket(s3, FOLDER)

        api_dir = state / "api"
        write_api_data(api_dir, s3, [User(DEMO_EMAIL, DEMO_PASSWORD, Role.ADMIN)])
        secret = read_or_create_secret(
            api_dir / "jwt_secret", lambda: secrets.token_hex(32).encode()
        )
        config = ResourceApiConfig(data_dir=api_dir, jwt_secret=secret.decode())
        api_runner, api_url = await serve_resource_api(config, port=args.api_port)
        stack.push_async_callback(api_runner.cleanup)
        fragment = (api_dir / KEY_FRAGMENT_FILE).read_bytes()

        sample = state / SAMPLE
        if not sample.exists():
            sample.write_bytes(os.urandom(8 << 20))
        env = {
            "RESOURCE_API_URL": api_url,
            "EDGELOADER_CACHE_DIR": str(state / "cache"),
            "IMAGES_PATH": str(state / "images.enc"),
            "EDGELOADER_STATE_DIR": str(state / "loader"),
        }
        target = PublishTarget(api_url, DEMO_EMAIL, DEMO_PASSWORD)
        await publish_file(target, sample, FOLDER, SAMPLE)

        engine = await asyncio.to_thread(_sample_archive, state, fragment, args.engine)
        if engine is not None:
            stack.callback(engine.stop)
            env |= {"DOCKER_HOST": engine.docker_host, "EDGELOADER_API_SERVICES": DEMO_SERVICE}
        settings = Settings.from_env(env).with_overrides(host=args.host, port=args.port)
        loader_runner, loader = await serve_loader(settings, host=settings.host, port=settings.port)
        stack.push_async_callback(loader_runner.cleanup)
        print("\n".join(banner(loader, sample, engine is not None)) + "\n", flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")


#: The CLI lines of README.md's first block, exactly: the banner prints them.
CLI_LINES = (
    ".venv/bin/edgeloader login --device"
    "                                   # tokens kept in ~/.config/edgeloader",
    ".venv/bin/edgeloader load sample-model.bin -o sample-model.bin"
    "        # streamed, with a progress bar",
    ".venv/bin/edgeloader prefetch sample-model.bin --wait"
    "                 # pre-staged for offline installs",
    ".venv/bin/edgeloader unlock --wait"
    "                                    # images decrypted into the engine",
)


def banner(url: str, sample: Path, with_engine: bool) -> list[str]:
    """What ``make run`` prints once the stack is up: the demo user, the
    README's CLI lines, and the same over REST with curl."""
    creds = json.dumps({"email": DEMO_EMAIL, "password": DEMO_PASSWORD})
    folder = json.dumps({"folder": FOLDER})
    ctype = "-H 'Content-Type: application/json'"
    bearer = '-H "Authorization: Bearer $TOKEN"'
    read_token = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"accessToken\"])'"
    lines = [
        "",
        f"edgeloader is up at {url}  (Ctrl-C stops everything)",
        "",
        f"demo user: {DEMO_EMAIL}",
        f"password:  {DEMO_PASSWORD}",
        "",
        "In a second shell, the CLI (login asks for the user and password above):",
        "",
    ]
    if url != DEFAULT_URL:
        lines.append(f"export EDGELOADER_URL={url}")
    lines += CLI_LINES
    if not with_engine:
        lines.append("# (no engine here: unlock has nothing to load into; `make engine`)")
    lines += [
        "",
        "Or over REST with curl:",
        "",
        "  # log the device in upstream; the answer carries an access token for agents",
        f"  TOKEN=$(curl -s -X POST {url}/login {ctype} -d '{creds}' | {read_token})",
        "  # load the sample model and compare it with the original",
        f"  curl -s -X POST {url}/load/{SAMPLE} {bearer} {ctype} -d '{folder}' "
        f"-o /tmp/{SAMPLE} && cmp /tmp/{SAMPLE} {sample} && echo identical",
    ]
    if with_engine:
        lines += [
            "  # unlock the service images into the engine, then watch it",
            f"  curl -s -X POST {url}/unlock {bearer} {ctype} -d '{creds}'",
            f"  curl -s {bearer} {url}/unlock/status",
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--state-dir", type=Path, default=Path(".state/devstack"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("EDGELOADER_PORT", 8080)))
    parser.add_argument("--api-port", type=int, default=8090)
    parser.add_argument("--s3-port", type=int, default=9000)
    parser.add_argument(
        "--engine",
        choices=("podman", "docker"),
        default=os.environ.get("EDGELOADER_DEV_ENGINE", "podman"),
        help="the container engine to start (default: $EDGELOADER_DEV_ENGINE or podman)",
    )
    args = parser.parse_args()
    logs.configure("text", "INFO")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        asyncio.run(run(args))
    except EdgeloaderError as exc:
        print(f"edgeloader: {exc.detail}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edgeloader: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
