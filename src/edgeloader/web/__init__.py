"""The HTTP face of the loader: routes that call services, and nothing more."""

from edgeloader.web.app import create_app

__all__ = ["create_app"]
