"""``edgeloader`` command line: the loader service and the publishing tools.

Every subcommand returns an exit code; expected failures print one line on
stderr (``edgeloader: ...``) instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgeloader import __version__, logs
from edgeloader.errors import EdgeloaderError


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloader",
        description=(
            "Gets encrypted models and container images onto this device: "
            "a REST service for on-device agents, plus the publishing tools."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    from edgeloader.publish_cli import add_publish_resource
    from edgeloader.resource_api.cli import add_subcommands

    add_publish_resource(add_subcommands(commands))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeloaderError as exc:
        print(f"edgeloader: {exc.detail}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use, a state folder we may not write...
        print(f"edgeloader: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
