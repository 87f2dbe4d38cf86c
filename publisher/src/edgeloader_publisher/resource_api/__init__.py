"""The reference Resource API (docs/protocol.md) and its user store. Tests and
the local stack run it in place of the real one."""

from edgeloader_publisher.resource_api.server import ResourceApiConfig, create_resource_api_app
from edgeloader_publisher.resource_api.users import User, UserStore

__all__ = ["ResourceApiConfig", "User", "UserStore", "create_resource_api_app"]
