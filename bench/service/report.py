"""The tables: each figure, its ratio to the baseline and the verdict
against its target."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from bench.service import MiB
from bench.service.capped import CappedResult
from bench.service.crowd import CrowdResult
from bench.service.load import LoopbackResult
from bench.service.measure import Transfer
from bench.service.signed import SignedResult
from bench.service.unlock import API, CLI, SIGNED, UNLOCK, P3Result

P3_TARGET_RATIO, RSS_TARGET_MB = 1.15, 150
LOOPBACK_TARGET, CAPPED_TARGET, SIGNED_TARGET = 0.90, 3.0, 0.90
# moto reads a whole object for every GET, ranged or not: a load there may
# cost one more read of it than a raw GET (the v1 tail), hence its own target.
MOTO_TARGET = 0.60
PROCESSES = ("loader", "server", "client")

T = TypeVar("T")


def print_header(servers: dict[str, str]) -> None:
    print(f"edgeloader service benchmarks; {os.cpu_count()} cores")
    print("S3 servers: " + "; ".join(f"{name} ({v})" for name, v in servers.items()))
    print("loader: `python -m edgeloader serve`, default auth (bearer token), no model cache")
    print("        unless a table says so,")
    print("        download settings: the defaults unless listed below;")
    print("        every consumer hashes (SHA-256) what it receives and checks it")


def print_loopback(results: list[LoopbackResult], runs: int) -> None:
    print()
    print("P2  loopback: POST /load through the loader vs a raw aiobotocore GET of the big part")
    print(f"    same S3 server; median of {runs} runs after 1 warm-up; raw and loader alternate")
    print(
        f"{'server':<7} {'size':>9} {'loader MB/s':>12} {'raw MB/s':>9} {'ratio':>6}"
        f"  {'(target)':<11} {'loader peak RSS':>15}  {'(<=150 MB)':<10} {'idle RSS':>9}"
    )
    for r in results:
        loader, raw = _median_run(r.loader), _median_run(r.raw)
        ratio = loader.mbps / raw.mbps
        peak_mb = r.peak_rss / 1e6
        target = MOTO_TARGET if r.server == "moto" else LOOPBACK_TARGET
        print(
            f"{r.server:<7} {_mib(r.size):>9} {loader.mbps:>12.0f} {raw.mbps:>9.0f} {ratio:>6.2f}"
            f"  {_verdict(ratio >= target) + f' >={target:.1f}':<11} {peak_mb:>12.0f} MB  "
            f"{_verdict(peak_mb <= RSS_TARGET_MB):<10} {r.idle_rss / 1e6:>6.0f} MB"
        )
    print()
    print(
        "    raw with the loader's request pattern (4 ranged GETs of 8 MiB at once, hashed"
        " in order):"
    )
    for r in results:
        loader, ranges = _median_run(r.loader), _median_run(r.raw_ranges)
        print(
            f"{r.server:<7} {_mib(r.size):>9}  raw ranges {ranges.mbps:.0f} MB/s"
            f" ({_all(r.raw_ranges)}); loader v1 vs it: {loader.mbps / ranges.mbps:.2f}x"
        )
    print()
    print("    the same plaintext published in format v2 (no tail read; every chunk verified):")
    for r in results:
        v1, v2 = _median_run(r.loader), _median_run(r.loader_v2)
        raw = _median_run(r.raw)
        print(
            f"{r.server:<7} {_mib(r.size):>9}  v2 load {v2.mbps:.0f} MB/s:"
            f" {v2.mbps / raw.mbps:.2f}x raw, {v2.mbps / v1.mbps:.2f}x v1;"
            f" first byte v2 {v2.first_byte:.2f} s vs v1 {v1.first_byte:.2f} s"
        )
    print()
    print("    all runs, MB/s (loader v1 | loader v2 | raw):")
    for r in results:
        print(
            f"{r.server:<7} {_mib(r.size):>9}  {_all(r.loader)} | {_all(r.loader_v2)}"
            f" | {_all(r.raw)}"
        )
    print()
    print("    where the time goes (median runs): before the first byte, then the body;")
    print("    CPU in % of one core over each phase (2 cores = 200%)")
    print(
        f"{'server':<7} {'size':>9} {'path':<7} {'1st byte s':>10} {'server':>6} {'loader':>7}"
        f" {'body s':>7} {'body MB/s':>9} {'server':>6} {'loader':>7} {'client':>7}"
    )
    for r in results:
        for path, t in (("raw", _median_run(r.raw)), ("loader", _median_run(r.loader))):
            body_s = t.seconds - t.first_byte
            print(
                f"{r.server:<7} {_mib(r.size):>9} {path:<7} {t.first_byte:>10.2f}"
                f" {_cpu(t.cpu_head, 'server', t.first_byte):>6}"
                f" {_cpu(t.cpu_head, 'loader', t.first_byte):>7} {body_s:>7.2f}"
                f" {t.body_mbps:>9.0f} {_cpu(t.cpu_body, 'server', body_s):>6}"
                f" {_cpu(t.cpu_body, 'loader', body_s):>7}"
                f" {_cpu(t.cpu_body, 'client', body_s):>7}"
            )
    for r in results:
        print(
            f"    {r.server}, {_mib(r.size)}: the 32-byte ranged GET the loader adds (plaintext"
            f" length) takes {median(r.tail, float) * 1000:.0f} ms alone"
        )
    print()
    print("    CPU seconds per GB moved, each process, first byte included (median runs);")
    print("    'v1 cache' is a v1 load through a loader with a model cache, written as it loads")
    print(
        f"{'server':<7} {'size':>9} {'path':<9} {'MB/s':>6} {'loader':>7} {'(<=1.0)':<8}"
        f" {'server':>7} {'client':>7}"
    )
    for r in results:
        paths = (
            ("raw", r.raw),
            ("ranges", r.raw_ranges),
            ("v1", r.loader),
            ("v2", r.loader_v2),
            ("v1 cache", r.loader_cached),
        )
        for path, runs_ in paths:
            run = _median_run(runs_)
            ours = "loader" in run.cpu_body
            per_gb = f"{_per_gb(run, 'loader'):>7.2f}" if ours else f"{'-':>7}"
            verdict = _verdict(_per_gb(run, "loader") <= 1.0) if ours else ""
            print(
                f"{r.server:<7} {_mib(r.size):>9} {path:<9} {run.mbps:>6.0f} {per_gb} {verdict:<8}"
                f" {_per_gb(run, 'server'):>7.2f} {_per_gb(run, 'client'):>7.2f}"
            )


def print_capped(r: CappedResult, runs: int) -> None:
    loader, raw = _median_run(r.loader), _median_run(r.raw)
    ratio = loader.mbps / raw.mbps
    peak_mb = r.peak_rss / 1e6
    print()
    print("P2  capped link: POST /load (parallel ranged reads) vs one raw GET,")
    print(
        f"    both through one proxy pacing each connection to {r.rate / 1e6:g} MB/s with"
        f" {r.latency * 1000:g} ms added; {_mib(r.size)} on {r.server}"
    )
    print(f"    median of {runs} runs (after 1 warm-up load); raw and loader alternate")
    print(
        f"{'loader MB/s':>12} {'raw MB/s':>9} {'ratio':>6}  {'(>=3.00)':<8}"
        f" {'loader peak RSS':>15}  {'(<=150 MB)':<10} {'idle RSS':>9}"
    )
    print(
        f"{loader.mbps:>12.1f} {raw.mbps:>9.1f} {ratio:>6.2f}  "
        f"{_verdict(ratio >= CAPPED_TARGET):<8} {peak_mb:>12.0f} MB  "
        f"{_verdict(peak_mb <= RSS_TARGET_MB):<10} {r.idle_rss / 1e6:>6.0f} MB"
    )
    print(f"    all runs, MB/s (loader | raw): {_all(r.loader, 1)} | {_all(r.raw, 1)}")
    for path, t in (("raw", raw), ("loader", loader)):
        body_s = t.seconds - t.first_byte
        cpu = ", ".join(f"{name} {_cpu(t.cpu_body, name, body_s)}" for name in t.cpu_body)
        print(
            f"    {path}, median run: {t.seconds:.2f} s, first byte {t.first_byte:.2f} s;"
            f" CPU over the body: {cpu}"
        )


def print_crowd(results: list[CrowdResult], runs: int) -> None:
    first = results[0]
    print()
    print(
        f"P2  {first.clients} concurrent POST /load of one {_mib(first.size)} resource vs"
        f" {first.clients} concurrent raw GETs of its big part, on {first.server};"
    )
    print("    the loader has a model cache: each round once from the CDN (the cache emptied")
    print("    first) and once served from the cache; all loads byte-identical to the")
    print(f"    plaintext; median of {runs} rounds after 1 warm-up; MB/s = all bytes / wall time;")
    print("    idle RSS after a first load; peak RSS per round (VmHWM reset before it);")
    print("    CPU seconds per GB moved, all loads together")
    print(
        f"{'resource':<10} {'source':<6} {'MB/s':>6} {'vs raw':>7} {'peak RSS':>9}"
        f" {'(<=idle+64)':<12} {'idle RSS':>9} {'loader':>7} {'server':>7} {'client':>7}"
    )
    for r in results:
        raw = median(r.raw, lambda x: x.mbps)
        rows = (
            ("raw", raw),
            ("cdn", median(r.from_cdn, lambda x: x.mbps)),
            ("cache", median(r.from_cache, lambda x: x.mbps)),
        )
        for source, x in rows:
            peak = "" if source == "raw" else f"{x.peak_rss / 1e6:>6.0f} MB"
            verdict = "" if source == "raw" else _verdict(x.peak_rss <= r.rss_bound)
            gb = x.nbytes / 1e9
            print(
                f"{r.label:<10} {source:<6} {x.mbps:>6.0f} {x.mbps / raw.mbps:>7.2f} {peak:>9}"
                f" {verdict:<12} {r.idle_rss / 1e6:>6.0f} MB"
                + "".join(f" {x.cpu.get(n, 0.0) / gb:>7.2f}" for n in PROCESSES)
            )
        worst = max(x.peak_rss for x in r.from_cdn + r.from_cache)
        print(f"    {r.label}: highest peak of all rounds {worst / 1e6:.0f} MB")


def print_p3(result: P3Result, runs: int) -> None:
    medians = {method: median(items, lambda r: r.seconds) for method, items in result.runs.items()}
    api_target = 1.05  # the loader's /unlock against the engine's fastest HTTP load
    cli, ours = medians[CLI], medians[UNLOCK]
    fastest = min(result.api_methods, key=lambda method: medians[method].seconds)
    api = medians[fastest]
    names = list(ours.temp_bytes)
    print()
    print(f"P3  on {result.engine_version}: POST /unlock (decrypt + stream into the engine)")
    print(f"    vs `{result.kind} load -i` and the engine's HTTP image loads, of the plain archive")
    print(
        f"    one {result.plain_bytes / 1e9:.2f} GB docker-archive; vfs;"
        f" the engine's spool on tmpfs ({result.engine_tmpdir})"
    )
    print(f"    median of {runs} runs after 1 warm-up; the methods alternate, each round")
    print("    starting with the next one; API loads stream the body chunked, 1 MiB pieces")
    print("    temp = most bytes seen at once (sampled every 20 ms) in each folder")
    header = "".join(f" {n:>16}" for n in names)
    print(
        f"{'method':<21} {'wall s':>6} {'vs CLI':>6}  {'(<=1.15)':<8}"
        f" {'vs API':>6}  {'(<=1.05)':<8}{header}"
    )
    for method, run in medians.items():
        vs_cli, vs_api = run.seconds / cli.seconds, run.seconds / api.seconds
        loader = method in (UNLOCK, SIGNED)
        cli_verdict = _verdict(vs_cli <= P3_TARGET_RATIO) if loader else ""
        api_verdict = _verdict(vs_api <= api_target) if loader else ""
        temps = "".join(f" {_bytes(run.temp_bytes[n]):>16}" for n in names)
        print(
            f"{method:<21} {run.seconds:>6.2f} {vs_cli:>5.2f}x  {cli_verdict:<8}"
            f" {vs_api:>5.2f}x  {api_verdict:<8}{temps}"
        )
    print(f"    vs API = against the fastest HTTP load of this run: {fastest}")
    for other in result.api_methods:
        if other != API:
            ratio = medians[API].seconds / medians[other].seconds
            print(f"    {API} vs {other}: {ratio:.2f}x")
    print()
    for method, items in result.runs.items():
        print(f"    all runs, s, {method}: " + " ".join(f"{r.seconds:.2f}" for r in items))
    for method in (*result.api_methods, UNLOCK, SIGNED):
        run = medians[method]
        sent = run.phases.get("loading_images")
        started = run.phases.get("decrypting", 0.0)
        if sent is not None:
            print(
                f"    {method}, median run: body sent {sent - started:.2f} s after "
                f"{started:.2f} s of set-up, then the engine {run.seconds - sent:.2f} s"
            )
    sampled = max(r.rss for r in result.runs[UNLOCK])
    print(
        f"    loader peak RSS: {result.peak_rss / 1e6:.0f} MB (VmHWM over the process's life); "
        f"most sampled during an unlock: {sampled / 1e6:.0f} MB"
    )


def median(items: Sequence[T], key: Callable[[T], float]) -> T:
    """The middle item by ``key`` (the upper one of an even count)."""
    return sorted(items, key=key)[len(items) // 2]


def print_signed(result: SignedResult, runs: int) -> None:
    plain, signed = _median_run(result.plain), _median_run(result.signed)
    ratio = signed.mbps / plain.mbps
    print()
    print("P4  a v2 load under a signed release (1 MiB segments, each verified before its")
    print("    plaintext leaves) vs the same load with no publisher key")
    print(
        f"    {result.server}, {_mib(result.size)}, no model cache; median of {runs} runs after"
        " 1 warm-up; the two alternate"
    )
    print(
        f"{'load':<8} {'MB/s':>6} {'1st byte s':>10} {'loader CPU s/GB':>16}"
        f" {'server CPU s/GB':>16} {'client CPU s/GB':>16}"
    )
    for name, t in (("plain", plain), ("signed", signed)):
        print(
            f"{name:<8} {t.mbps:>6.0f} {t.first_byte:>10.2f} {_per_gb(t, 'loader'):>16.2f}"
            f" {_per_gb(t, 'server'):>16.2f} {_per_gb(t, 'client'):>16.2f}"
        )
    print(f"    signed vs plain: {ratio:.2f}x  {_verdict(ratio >= SIGNED_TARGET)} (>= 0.90)")
    print(f"    all runs, MB/s (plain | signed): {_all(result.plain)} | {_all(result.signed)}")


def _per_gb(t: Transfer, name: str) -> float:
    """CPU seconds of one process per GB moved, the first byte's included."""
    cpu = t.cpu_head.get(name, 0.0) + t.cpu_body.get(name, 0.0)
    return cpu / (t.nbytes / 1e9)


def _median_run(runs: list[Transfer]) -> Transfer:
    return median(runs, lambda t: t.mbps)


def _all(runs: list[Transfer], digits: int = 0) -> str:
    return " ".join(f"{t.mbps:.{digits}f}" for t in runs)


def _cpu(cpu: dict[str, float], name: str, seconds: float) -> str:
    return f"{100 * cpu[name] / seconds:.0f}%" if name in cpu else "-"


def _mib(size: int) -> str:
    return f"{size / MiB:g} MiB"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1_000_000 else f"{n} B"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"
