"""What the serving process sets for itself before its threads start."""

from __future__ import annotations

import ctypes
import os

__all__ = ["ARENAS", "limit_malloc_arenas"]

# glibc's mallopt() parameter: the most malloc arenas the process makes.
_M_ARENA_MAX = -8
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` malloc arenas, unless ``MALLOC_ARENA_MAX`` says
    otherwise; True when glibc took it (elsewhere nothing changes).

    Each thread that allocates (the worker threads that read and write the
    model cache) would otherwise get an arena of its own, and each arena keeps
    the pieces freed into it: 50 concurrent loads from the cache peaked about
    75 MB higher than with two arenas (the 50-load memory test in
    tests/integration/test_downloads.py), with no change in speed.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
