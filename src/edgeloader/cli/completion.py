"""``edgeloader completion SHELL``: the shell code that completes the
command's subcommands and options (argcomplete).

``eval "$(edgeloader completion bash)"`` in ``~/.bashrc`` turns it on; the
shell then runs ``edgeloader`` itself, with argcomplete's environment, to
ask what may come next, so the completions are always this version's.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from argcomplete.shell_integration import shellcode

if TYPE_CHECKING:
    from edgeloader.cli.commands.common import Subcommands

__all__ = ["SHELLS", "add_completion"]

SHELLS = ("bash", "zsh", "fish")


def add_completion(commands: Subcommands, prog: str) -> None:
    completion = commands.add_parser(
        "completion",
        help="print the shell code that completes edgeloader's commands",
        description=(
            "Print the code that makes SHELL complete edgeloader's commands and options. "
            f'Turn it on with `eval "$({prog} completion bash)"` in ~/.bashrc '
            f"(zsh: the same in ~/.zshrc; fish: `{prog} completion fish | source`)."
        ),
    )
    completion.add_argument("shell", metavar="SHELL", choices=SHELLS, help=", ".join(SHELLS))
    completion.set_defaults(func=lambda args: _print_shellcode(prog, args))


def _print_shellcode(prog: str, args: argparse.Namespace) -> int:
    print(shellcode([prog], shell=args.shell))
    return 0
