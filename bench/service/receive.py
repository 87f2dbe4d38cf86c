"""P2's receiving step alone: the CDN client reading one big part whole,
``read(256 KiB)`` at a time as a load's part does, woken once a piece has
arrived (``SO_RCVLOWAT``, the client's way: ``upstream/cdn.py``, ``Wakeup``)
against woken at every arrival (the same read with its ``wakeup`` taken
away). Both sides hash every byte (SHA-256) and run in this process, one
after the other in alternating order; the CPU is this process's.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass, field

from tests.support.harness.s3 import ACCESS_KEY, SECRET_KEY

from bench.service import BenchError, MiB, log
from bench.service.load import publish
from bench.service.stack import FOLDER, Upstream
from edgeloader.services.download import READ_SIZE
from edgeloader.upstream.cdn import Cdn, CdnConfig

WAYS = ("per piece", "per arrival")


@dataclass
class Read:
    seconds: float
    cpu: float
    pieces: int
    nbytes: int


@dataclass
class ReceiveResult:
    server: str
    size: int
    reads: dict[str, list[Read]] = field(default_factory=lambda: {w: [] for w in WAYS})


async def bench_receive(upstream: Upstream, server: str, size: int, runs: int) -> ReceiveResult:
    res = await publish(upstream, server, f"receive-{size // MiB}mib.bin", size)
    url = upstream.servers[server][1]
    config = CdnConfig(url, ACCESS_KEY, SECRET_KEY, ACCESS_KEY, SECRET_KEY)
    result = ReceiveResult(server, size)
    digests: set[str] = set()
    async with Cdn(config) as cdn:
        for i in range(runs + 1):
            log(
                f"P2 receive on {server}: {size // MiB} MiB, "
                + ("warm-up" if i == 0 else f"run {i}/{runs}")
            )
            for way in WAYS if i % 2 == 0 else WAYS[::-1]:
                found = await cdn.open_range(FOLDER, res.big)
                if way == "per arrival":
                    found.wakeup = None
                digest, done, pieces = hashlib.sha256(), 0, 0
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    while done < found.length:
                        piece = await found.read(min(READ_SIZE, found.length - done))
                        digest.update(piece)
                        done += len(piece)
                        pieces += 1
                finally:
                    found.close()
                read = Read(time.perf_counter() - wall, time.process_time() - cpu, pieces, done)
                digests.add(digest.hexdigest())
                if i > 0:
                    result.reads[way].append(read)
    if len(digests) != 1:
        raise BenchError("the reads of one object gave different bytes")
    return result


def print_receive(results: list[ReceiveResult], runs: int) -> None:
    print()
    print("P2  receiving alone: the CDN client reads a big part whole, read(256 KiB) at a time,")
    print("    woken once a piece arrived (the client's way) vs at every arrival;")
    print(f"    both hash every byte; median of {runs} runs after 1 warm-up; the two alternate")
    print(
        f"{'server':<8} {'size':>8}  {'woken':<12} {'MB/s':>6} {'pieces':>7} "
        f"{'KiB/piece':>9}  {'CPU s/GB':>8}"
    )
    for r in results:
        medians = {}
        for way in WAYS:
            reads = r.reads[way]
            mbps = statistics.median(x.nbytes / x.seconds / 1e6 for x in reads)
            cpu = statistics.median(x.cpu / (x.nbytes / 1e9) for x in reads)
            pieces = statistics.median(x.pieces for x in reads)
            medians[way] = (mbps, cpu)
            kib = r.size / pieces / 1024
            print(
                f"{r.server:<8} {r.size // MiB:>4} MiB  {way:<12} {mbps:>6.0f} "
                f"{pieces:>7.0f} {kib:>9.0f}  {cpu:>8.2f}"
            )
        (m1, c1), (m2, c2) = medians[WAYS[0]], medians[WAYS[1]]
        print(
            f"{'':<8} {'':>8}  per piece vs per arrival: "
            f"{m1 / m2:.2f}x MB/s, {c1 / c2:.2f}x CPU per GB"
        )
        runs_cpu = {
            w: " ".join(f"{x.cpu / (x.nbytes / 1e9):.2f}" for x in r.reads[w]) for w in WAYS
        }
        print(f"{'':<8} {'':>8}  all runs, CPU s/GB: {runs_cpu[WAYS[0]]} | {runs_cpu[WAYS[1]]}")
