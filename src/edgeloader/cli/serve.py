"""``edgeloader serve``: the loader's HTTP API in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloader import logs
from edgeloader.process import limit_malloc_arenas

if TYPE_CHECKING:
    from edgeloader.config import Settings

log = logging.getLogger(__name__)


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "serve",
        help="run the loader service",
        description=(
            "Run the loader's HTTP API. Configuration comes from the environment "
            "and, optionally, a TOML or YAML file whose keys are the variables' names "
            "in lower case without EDGELOADER_ (RESOURCE_API_URL or resource_api_url "
            "is required; see docs/configuration.md). The environment wins over the "
            "file; the flags below win over both."
        ),
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="configuration file, .toml, .yaml or .yml (default: $EDGELOADER_CONFIG, if set)",
    )
    run.add_argument(
        "--host", help="address to bind (default: $EDGELOADER_HOST, the file's host, or 0.0.0.0)"
    )
    run.add_argument(
        "--port",
        type=int,
        help="port to bind (default: $EDGELOADER_PORT, the file's port, or 8080)",
    )
    run.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    run.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    run.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from edgeloader.config import Settings

    logs.configure(args.log_format, args.log_level)
    flags = {"host": args.host, "port": args.port}
    settings = Settings.from_env(file=args.config).with_overrides(
        **{k: v for k, v in flags.items() if v is not None}
    )
    limit_malloc_arenas()  # before the first worker thread
    asyncio.run(_serve_until_stopped(settings))
    return 0


async def _serve_until_stopped(settings: Settings) -> None:
    from edgeloader.web import create_app
    from edgeloader.web.server import start_loader

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await start_loader(
        create_app(settings),
        settings,
        settings.host,
        settings.port,
        access_log_format='%a "%r" %s %b %Tfs',
    )
    log.info("serving on %s:%d", settings.host, settings.port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
