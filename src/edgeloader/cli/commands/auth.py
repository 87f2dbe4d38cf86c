"""``edgeloader login`` and ``edgeloader logout``."""

from __future__ import annotations

import argparse

from edgeloader.cli.client import ApiError, Client, SessionEnded, raise_for_answer, read_json
from edgeloader.cli.commands.common import Subcommands, format_time, with_client
from edgeloader.cli.credentials import SavedTokens
from edgeloader.cli.output import Console, read_line, read_password

__all__ = ["add_auth_commands", "read_credentials"]


def add_auth_commands(commands: Subcommands, parent: argparse.ArgumentParser) -> None:
    login = commands.add_parser(
        "login",
        parents=[parent],
        help="log in to the service and keep the token pair",
        description=(
            "Log in with an upstream user's email and password (POST /api/auth/login) "
            "and keep the token pair in the credentials file (docs/cli.md). The password "
            "comes from a prompt, or from stdin's first line with --password-stdin; "
            "never from the command line."
        ),
    )
    add_credential_options(login)
    login.add_argument(
        "--device",
        action="store_true",
        help=(
            "also log the device itself in upstream as this user (POST /login), "
            "which loads and uploads need; changing the device's user needs an admin"
        ),
    )
    login.set_defaults(func=with_client(login_command))

    logout = commands.add_parser(
        "logout",
        parents=[parent],
        help="end the session and forget the token pair",
        description="Revoke the stored token pair (POST /api/auth/logout) and forget it.",
    )
    logout.set_defaults(func=with_client(logout_command))


def add_credential_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--email", help="the upstream user's email (default: a prompt)")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin",
    )


def read_credentials(args: argparse.Namespace, default_email: str = "") -> tuple[str, str]:
    """Email (``--email``, else a prompt, else ``default_email``) and password
    (stdin's first line with ``--password-stdin``, else a prompt). With
    ``--password-stdin`` stdin is the password's alone: a known email is
    not asked for."""
    email = args.email
    if not email and args.password_stdin and default_email:
        email = default_email
    if not email:
        email = read_line(
            "Email", default=default_email, missing="no email: pass --email or run on a terminal"
        )
    return email, read_password(from_stdin=args.password_stdin)


async def _post_credentials(
    client: Client, route: str, email: str, password: str, token: str | None
) -> dict[str, object]:
    """A login route: a 401 here is a wrong password, never a token to refresh."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    body = {"email": email, "password": password}
    async with client.request(
        "POST", route, json=body, headers=headers, expect=None, auth=False
    ) as resp:
        if resp.status != 200:
            await raise_for_answer(resp)
        answer = await read_json(resp)
    if not isinstance(answer, dict):
        raise ApiError(200, "the answer is not a JSON object")
    return answer


async def login_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    stored = client.pair()
    email, password = read_credentials(args, stored.user if stored else "")
    answer: dict[str, object] = {}
    if args.device:
        # An admin's valid token lets the device change to another user.
        token = stored.access_token if stored and not stored.expired() else None
        answer = await _post_credentials(client, "/login", email, password, token)
    if "accessToken" not in answer:  # not --device, or a service in compat mode
        answer = await _post_credentials(client, "/api/auth/login", email, password, None)
    try:
        pair = SavedTokens.from_answer(answer, user=email)
    except ValueError as exc:
        raise ApiError(200, f"bad login answer: {exc}") from None
    await client.save_pair(pair)
    device = " (the device is logged in upstream as this user too)" if args.device else ""
    out.result(
        {
            "url": client.url,
            "user": email,
            "role": pair.role,
            "device": bool(args.device),
            "expiresAt": pair.expires_at,
            "credentials": str(client.store.path),
        },
        f"logged in to {client.url} as {email}, role {pair.role or 'none'}{device}; "
        f"access token valid until {format_time(pair.expires_at)}, "
        "refreshed automatically",
    )
    return 0


async def logout_command(args: argparse.Namespace, client: Client, out: Console) -> int:
    pair = client.pair()
    if pair is not None and pair.expired():
        try:
            pair = await client.refresh(pair)
        except SessionEnded:
            pair = None  # already over on the service's side
    if pair is None:
        await client.forget_pair()
        out.result({"url": client.url, "loggedOut": False}, f"not logged in to {client.url}")
        return 0
    headers = {"Authorization": f"Bearer {pair.access_token}"}
    body = {"refreshToken": pair.refresh_token}
    async with client.request(
        "POST", "/api/auth/logout", json=body, headers=headers, expect=None, auth=False
    ) as resp:
        if resp.status not in (200, 401):  # 401: the session had already ended
            await raise_for_answer(resp)
    await client.forget_pair()
    out.result({"url": client.url, "loggedOut": True}, f"logged out of {client.url}")
    return 0
