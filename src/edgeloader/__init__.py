"""edgeloader: gets proprietary models and images onto edge devices safely."""

from __future__ import annotations

__version__ = "0.1.0"


def _check_core_version(core_version: str, package_version: str = __version__) -> None:
    """Refuses a native core built from other sources than this package.

    A stale ``edgeloader._core`` (an old build left in place) would pass
    every import and then misbehave; failing at import names the cause.
    """
    if core_version != package_version:
        raise ImportError(
            f"edgeloader {package_version} found its native core edgeloader._core at "
            f"version {core_version}: the extension is stale; run make dev to rebuild it"
        )


def _load_core() -> None:
    # The core imports edgeloader.errors lazily, on its first error, so
    # loading it here, after __version__ is set, makes no import cycle.
    try:
        from edgeloader import _core
    except ImportError as exc:
        raise ImportError(
            f"edgeloader's native core edgeloader._core cannot be imported ({exc}); "
            "the extension is missing or broken: run make dev to build it"
        ) from exc
    _check_core_version(_core.__version__)


_load_core()
