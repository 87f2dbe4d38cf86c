"""The publishing side: the reference Resource API (DESIGN §3), its user store
and the archive publisher. Tests and the local stack run it instead of the
third-party API."""

from edgeloader.resource_api.publish import encrypt_archive
from edgeloader.resource_api.server import ResourceApiConfig, create_resource_api_app
from edgeloader.resource_api.users import ROLES, UPLOAD_ROLES, User, UserStore

__all__ = [
    "ROLES",
    "UPLOAD_ROLES",
    "ResourceApiConfig",
    "User",
    "UserStore",
    "create_resource_api_app",
    "encrypt_archive",
]
