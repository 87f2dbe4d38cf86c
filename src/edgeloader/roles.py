"""The upstream roles (docs/protocol.md), in one enumeration.

A role arrives as a string in an upstream token or one of ours; comparing
it with these members works because ``Role`` is a ``StrEnum``.
"""

from __future__ import annotations

import enum

__all__ = ["ADMINS", "UPLOADERS", "Role"]


class Role(enum.StrEnum):
    OPERATOR = "Operator"
    VALIDATOR = "Validator"
    COMPANION_PC = "CompanionPC"
    ADMIN = "Admin"
    RESOURCE_UPLOADER = "ResourceUploader"
    API_ADMIN = "ApiAdmin"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(role.value for role in cls)


#: Roles that manage the box: API keys, the audit, functions.
ADMINS = frozenset({Role.ADMIN, Role.API_ADMIN})
#: Roles that may publish resources.
UPLOADERS = frozenset({Role.RESOURCE_UPLOADER, Role.ADMIN, Role.API_ADMIN})
