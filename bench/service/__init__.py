"""Service benchmarks, each against a raw baseline measured in the same run.

P2  POST /load through the loader against a raw S3 GET (aiobotocore) of the
    same big part from the same moto server.
P3  POST /unlock of an encrypted docker-archive into podman against
    `podman load -i` of the plain archive into the same storage.

    make bench-service        (or: python -m bench.service --quick)

moto's S3 server (ThreadedMotoServer), the reference Resource API and the
loader (`python -m edgeloader serve`) each run as their own process on
loopback: the loader's peak RSS is its VmHWM, and no client shares a GIL with
a server. A fresh loader process, in the default auth mode (bearer tokens) and
without a model cache, is started per P2 size and for P3. Figures
vary between machines and runs; the ratios are what to compare. MB is 10^6
bytes, MiB 2^20. Linux only (reads /proc).

Modules: `stack` starts the components (with tests/support/harness), `load`
is P2, `unlock` is P3, `measure` samples time, CPU, RSS and temp bytes,
`report` prints the tables, `__main__` parses the options and runs them.
"""

from __future__ import annotations

import sys
import time

import aiohttp

MiB = 1 << 20
CHUNK = MiB
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=300)


class BenchError(RuntimeError):
    """Set-up failed or a measured operation did not succeed."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
