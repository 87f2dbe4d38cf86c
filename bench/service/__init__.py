"""Service benchmarks, each against a raw baseline measured in the same run.

P2  POST /load through the loader against raw aiobotocore GETs of the same
    big part from the same S3 server, every consumer hashing what it gets,
    with the CPU seconds per GB of each process (loader, S3 server, client):
    loopback   one load at a time, on s3s-fs (64 MiB, 256 MiB, 1 GiB) and on
               moto (256 MiB, 1 GiB), also through a loader with a model cache;
    capped     through a proxy pacing each connection (20 MB/s, 20 ms);
    crowd      50 concurrent loads of one resource through a loader with a
               model cache, from the CDN and from the cache, v1 and a signed
               v2 (aggregate, peak RSS against idle + 64 MB).
P4  a v2 load under a signed release (every 1 MiB segment verified) against
    the same load with no publisher key.
P3  POST /unlock of an encrypted docker-archive into each engine (podman,
    Docker Engine) against its CLI load (`podman load -i`, `docker load
    -i`) and its HTTP image loads of the plain archive, also under a release.

    make bench-service        (or: python -m bench.service --quick --only p2)

Two S3 servers: moto (ThreadedMotoServer), which reads a whole object for
every GET, a 32-byte range included, so that parallel ranged reads on it
measure moto; and s3s-fs (crates.io, installed by `make bench-service` under
.cache/s3s-fs), which seeks its file. Every figure names its server. moto,
s3s-fs, the throttling proxy, the reference Resource API and the loader
(`python -m edgeloader serve`) each run as their own process on loopback:
the loader's peak RSS is its VmHWM, and no client shares a GIL or an event
loop with a server. A fresh loader process, in the default auth mode (bearer
tokens), with the default download settings, is started per case; without
a model cache unless the case says otherwise. Figures vary between machines and runs; the ratios are
what to compare. MB is 10^6 bytes, MiB 2^20. Linux only (reads /proc).

Modules: `stack` starts the components (with tests/support/harness), `s3s`
starts s3s-fs, `throttle` the proxy; `load` is P2 on loopback (and the
publishing and consumers the others share), `capped` the capped link,
`crowd` the concurrent loads, `signed` is P4, `unlock` is P3; `measure` samples time, CPU,
RSS and temp bytes, `report` prints the tables, `__main__` parses the
options and runs them.
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
