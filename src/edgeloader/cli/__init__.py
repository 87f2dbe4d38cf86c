# PYTHON_ARGCOMPLETE_OK (argcomplete: this program completes itself)
"""``edgeloader``: the command line of the device.

``serve`` runs the service; the client commands (``login``, ``load``,
``upload``, ``prefetch``, ``unlock``, ``fn``, ``keys``, ``audit``,
``doctor``) talk to a running service over its REST API (docs/cli.md);
``completion`` prints the shell code that completes them.
Each subcommand lives in its own module and registers itself on the
parser; :func:`edgeloader.cli.output.run_command` gives all of them one
way to fail.
The publishing tools are a separate program of the publisher distribution.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import cast

import argcomplete

from edgeloader import __version__
from edgeloader.cli.commands import add_client_commands
from edgeloader.cli.commands.common import ENV_URL, Subcommands
from edgeloader.cli.completion import add_completion
from edgeloader.cli.output import EXIT_OK, CommandParser, quiet_closed_output, run_command
from edgeloader.cli.serve import add_serve

PROG = "edgeloader"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=PROG,
        description=(
            "Gets encrypted models and container images onto this device, "
            "and serves them to on-device agents over REST."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Also accepted after a client command; see commands.common.client_options.
    parser.add_argument(
        "--url", default=None, help=f"the service, for client commands (default: ${ENV_URL})"
    )
    parser.add_argument("--json", action="store_true", default=False, help="machine output")
    # Subcommand parsers are CommandParsers too (argparse makes them of the parent's class).
    commands = cast(
        Subcommands, parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    )
    add_serve(commands)
    add_client_commands(commands)
    add_completion(commands, PROG)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)  # answers the shell and exits, when it asks
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # --help into a reader that stopped
        quiet_closed_output()
        return EXIT_OK
    return run_command(PROG, args.func, args)
