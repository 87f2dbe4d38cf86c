"""P4: a v2 load under a signed release (1 MiB segments, every segment
verified before its plaintext leaves) against the same load with no
publisher key, in one run from the same S3 server: what the segment checks
cost. Both loaders run without a model cache; both consumers hash what they
receive. Also how a release is made for the benchmarks (a key pair, the
manifest written where the Resource API serves it)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from bench.service import NO_TIMEOUT, log
from bench.service.load import Published, publish, via_loader
from bench.service.measure import Clock, Transfer
from bench.service.stack import EMAIL, FOLDER, PASSWORD, Upstream, login, start_loader
from edgeloader.config import CdnOverrides
from edgeloader.services.manifest import Artifact
from edgeloader_publisher.release import (
    Release,
    generate_keypair,
    load_private_key,
    resource_artifact,
)
from edgeloader_publisher.resource import PublishTarget

SEGMENT = 1 << 20


@dataclass
class SignedResult:
    server: str
    size: int
    plain: list[Transfer]  # no publisher key
    signed: list[Transfer]  # under the release


async def sign_release(
    upstream: Upstream, artifacts: dict[str, Artifact], lists: dict[str, bytes] | None = None
) -> Path:
    """The run's release, with ``artifacts`` added, signed with the run's key
    pair (made on first use) in the Resource API's folder, ``lists`` (segment
    lists served from the empty folder) beside it; returns the public key."""
    keys = upstream.work / "publisher-keys"
    if not (keys / "publisher_key.pem").exists():
        generate_keypair(keys)
    upstream.released.update(artifacts)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    release = Release(1, expires, dict(upstream.released))
    release.write(load_private_key(keys / "publisher_key.pem"), upstream.api_dir, lists)
    return keys / "publisher_key.pub.pem"


async def list_resource(upstream: Upstream, res: Published) -> Artifact:
    """The release entry of a published resource, read back as a box reads
    it (its segment list goes up beside its small part)."""
    target = PublishTarget(upstream.api_url, EMAIL, PASSWORD, cdn=CdnOverrides(host=res.url))
    listed = await resource_artifact(target, FOLDER, res.name, SEGMENT)
    return listed.artifact


async def bench_signed(
    upstream: Upstream, server: str, size: int, runs: int, cleanup: contextlib.ExitStack
) -> SignedResult:
    mib = size // (1 << 20)
    res = await publish(upstream, server, f"p4-{server}-{mib}mib.bin", size, fmt=2)
    artifact = await list_resource(upstream, res)
    public = await sign_release(upstream, {f"{FOLDER}/{res.name}": artifact})
    plain, plain_url = await start_loader(
        upstream, cleanup, f"p4-plain-{mib}", EDGELOADER_CDN_HOST=res.url
    )
    signed, signed_url = await start_loader(
        upstream,
        cleanup,
        f"p4-signed-{mib}",
        EDGELOADER_CDN_HOST=res.url,
        EDGELOADER_PUBLISHER_KEY=str(public),
    )
    pids = {"server": upstream.servers[server][0].pid, "client": os.getpid()}
    result = SignedResult(server, size, [], [])
    async with aiohttp.ClientSession(timeout=NO_TIMEOUT) as http:
        plain_auth = await login(http, plain_url)
        signed_auth = await login(http, signed_url)
        for i in range(runs + 1):  # the first round warms up
            log(
                f"P4 signed load on {server}: {mib} MiB, " + (f"run {i}/{runs}" if i else "warm-up")
            )
            # Alternate which goes first, so neither always follows the other.
            pair = [
                ("plain", plain_url, plain_auth, plain.pid),
                ("signed", signed_url, signed_auth, signed.pid),
            ]
            for name, url, auth, pid in pair if i % 2 else reversed(pair):
                transfer = await via_loader(http, url, auth, res, Clock(pids | {"loader": pid}))
                if i > 0:
                    (result.plain if name == "plain" else result.signed).append(transfer)
    plain.stop()
    signed.stop()
    return result
