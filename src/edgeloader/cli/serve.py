"""``edgeloader serve``: the loader's HTTP API in the foreground."""

from __future__ import annotations

import argparse

from edgeloader import logs


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "serve",
        help="run the loader service",
        description=(
            "Run the loader's HTTP API. Configuration comes from the environment "
            "(RESOURCE_API_URL is required; see docs/configuration.md); "
            "the flags below win over it."
        ),
    )
    run.add_argument("--host", help="address to bind (default: $EDGELOADER_HOST or 0.0.0.0)")
    run.add_argument("--port", type=int, help="port to bind (default: $EDGELOADER_PORT or 8080)")
    run.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    run.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    run.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from edgeloader.config import Settings
    from edgeloader.web import create_app

    logs.configure(args.log_format, args.log_level)
    flags = {"host": args.host, "port": args.port}
    settings = Settings.from_env().with_overrides(
        **{k: v for k, v in flags.items() if v is not None}
    )
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=lambda msg: None,
        access_log_format='%a "%r" %s %b %Tfs',
        handler_cancellation=True,
    )
    return 0
