"""The client commands: each talks to a running service over its REST API
only, through :class:`edgeloader.cli.client.Client`, and reports through
:class:`edgeloader.cli.output.Console`."""

from __future__ import annotations

from edgeloader.cli.commands.audit import add_audit_command
from edgeloader.cli.commands.auth import add_auth_commands
from edgeloader.cli.commands.common import Subcommands, client_options
from edgeloader.cli.commands.doctor import add_doctor_command
from edgeloader.cli.commands.functions import add_function_commands
from edgeloader.cli.commands.images import add_images_command
from edgeloader.cli.commands.keys import add_keys_commands
from edgeloader.cli.commands.prefetch import add_prefetch_command
from edgeloader.cli.commands.resources import add_resource_commands
from edgeloader.cli.commands.unlock import add_unlock_command

__all__ = ["add_client_commands"]


def add_client_commands(commands: Subcommands) -> None:
    parent = client_options()
    add_auth_commands(commands, parent)
    add_resource_commands(commands, parent)
    add_prefetch_command(commands, parent)
    add_unlock_command(commands, parent)
    add_function_commands(commands, parent)
    add_images_command(commands, parent)
    add_keys_commands(commands, parent)
    add_audit_command(commands, parent)
    add_doctor_command(commands, parent)
