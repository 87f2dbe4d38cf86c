"""``python -m bench.service``: the options, the work folder, then the parts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from tests.support import docker, podman
from tests.support.harness.net import HarnessError

from bench import service
from bench.service import BenchError, MiB, log
from bench.service.capped import bench_capped
from bench.service.crowd import bench_crowd
from bench.service.load import bench_loopback
from bench.service.mount import bench_mount, print_mount
from bench.service.receive import bench_receive, print_receive
from bench.service.report import (
    print_capped,
    print_crowd,
    print_header,
    print_loopback,
    print_p3,
    print_signed,
)
from bench.service.s3s import DEFAULT_BINARY, s3s_fs_version
from bench.service.signed import bench_signed
from bench.service.stack import MOTO, S3S_FS, start_upstream
from bench.service.unlock import bench_p3

PARTS = ("loopback", "receive", "capped", "crowd", "signed", "p3", "mount")
P2_PARTS = ("loopback", "capped", "crowd")


def check_space(args: argparse.Namespace) -> None:
    # Every P2 object lives on its server (moto spools it to temp files too,
    # and keeps the upload's parts); P3 has the rootfs, the plain and
    # encrypted archives, the image in storage and the engine's temp copies.
    p2 = 0
    if "loopback" in args.only:
        p2 += 2 * (sum(args.p2_sizes) + sum(args.moto_sizes))
    if "receive" in args.only:
        p2 += len(args.loopback_servers) * args.receive_size
    if "capped" in args.only:
        p2 += args.capped_size
    if "crowd" in args.only:
        p2 += args.crowd_size
    if "signed" in args.only:
        p2 += args.signed_size
    if "mount" in args.only:
        p2 += 2 * args.mount_size
    p3 = 6 * max(args.p3_sizes) if "p3" in args.only else 0
    need = (3 * p2 + p3 + 512) * MiB
    free = shutil.disk_usage(args.work_dir).free
    if free < need:
        raise BenchError(
            f"{args.work_dir}: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed"
        )


async def bench(args: argparse.Namespace) -> None:
    parts = args.only
    if "p3" in parts and not all(_installed(kind) for kind in args.p3_engines):
        raise BenchError("P3 needs its engines, runc and busybox-static: run `make engine`")
    p2_server = args.p2_server
    needs_s3s = any(p in parts for p in ("capped", "crowd", "signed", "mount"))
    needs_s3s = needs_s3s and p2_server == S3S_FS
    needs_s3s |= any(p in parts for p in ("loopback", "receive")) and (
        S3S_FS in args.loopback_servers
    )
    check_space(args)
    work = Path(tempfile.mkdtemp(prefix="edgeloader-bench-", dir=args.work_dir))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        for sub in ("logs", "tmp"):
            (work / sub).mkdir()
        log(f"work folder {work}")
        s3s_fs = args.s3s_fs if needs_s3s else None
        upstream = await start_upstream(work, cleanup, s3s_fs)
        upstream.loader_env.update(args.loader_env)
        loopback = capped = crowd = signed = mount = None
        received = []
        p3 = []
        if "loopback" in parts:
            cases = [
                (server, size * MiB)
                for server in args.loopback_servers
                for size in (args.p2_sizes if server == S3S_FS else args.moto_sizes)
            ]
            loopback = await bench_loopback(upstream, cases, args.runs, cleanup)
        if "receive" in parts:
            for server in args.loopback_servers:
                size = args.receive_size * MiB
                received.append(await bench_receive(upstream, server, size, args.runs))
        if "capped" in parts:
            rate = int(args.capped_rate * 1e6)
            latency = args.capped_latency / 1000
            size = args.capped_size * MiB
            capped = await bench_capped(
                upstream, p2_server, size, rate, latency, args.runs, cleanup
            )
        if "crowd" in parts:
            size = args.crowd_size * MiB
            crowd = [
                await bench_crowd(
                    upstream, p2_server, size, args.crowd, args.runs, cleanup, signed=signed
                )
                for signed in (False, True)
            ]
        if "signed" in parts:
            size = args.signed_size * MiB
            signed = await bench_signed(upstream, p2_server, size, args.runs, cleanup)
        if "mount" in parts:
            size = args.mount_size * MiB
            mount = await bench_mount(upstream, p2_server, size, args.runs, work, cleanup)
        if "p3" in parts:
            for kind in args.p3_engines:
                for size in args.p3_sizes:
                    p3.append(await bench_p3(upstream, kind, size * MiB, args.runs, work, cleanup))
    servers = {MOTO: f"moto {version('moto')}, moto's ThreadedMotoServer"}
    if s3s_fs is not None:
        servers[S3S_FS] = f"{s3s_fs_version(s3s_fs)}, on {args.work_dir}"
    print_header(servers)
    if args.loader_env:
        print("loader settings: " + " ".join(f"{n}={v}" for n, v in args.loader_env))
    if loopback:
        print_loopback(loopback, args.runs)
    if received:
        print_receive(received, args.runs)
    if capped is not None:
        print_capped(capped, args.runs)
    if crowd:
        print_crowd(crowd, args.runs)
    if signed is not None:
        print_signed(signed, args.runs)
    for result in p3:
        print_p3(result, args.runs)
    if mount is not None:
        print_mount(mount, args.runs)


def _installed(kind: str) -> bool:
    return podman.available() if kind == "podman" else docker.available()


def _parts(text: str) -> tuple[str, ...]:
    chosen: list[str] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word == "p2":
            chosen += P2_PARTS
        elif word in PARTS:
            chosen.append(word)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown part {word!r}; one of p2, {', '.join(PARTS)}"
            )
    return tuple(p for p in PARTS if p in chosen)


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("EDGELOADER_"):
        raise argparse.ArgumentTypeError(f"expected EDGELOADER_NAME=VALUE, got {text!r}")
    return name, value


def _servers(text: str) -> list[str]:
    servers = [w.strip() for w in text.split(",") if w.strip()]
    if not servers or any(s not in (S3S_FS, MOTO) for s in servers):
        raise argparse.ArgumentTypeError(f"expected {S3S_FS} and/or {MOTO}, got {text!r}")
    return servers


def _engines(text: str) -> list[str]:
    engines = [w.strip() for w in text.split(",") if w.strip()]
    if not engines or any(e not in ("podman", "docker") for e in engines):
        raise argparse.ArgumentTypeError(f"expected podman and/or docker, got {text!r}")
    return engines


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MiB like 256,1024, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive MiB")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = service.__doc__
    assert doc is not None
    parser = argparse.ArgumentParser(
        prog="python -m bench.service",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--only",
        type=_parts,
        default=PARTS,
        metavar="PART,...",
        help="parts to run: loopback, capped, crowd (p2: all three), receive, signed, p3, "
        "mount (default: all)",
    )
    parser.add_argument(
        "--p2-sizes",
        type=_sizes,
        default=[64, 256, 1024],
        metavar="MiB,...",
        help="resource sizes for the loopback part on s3s-fs (default: 64,256,1024)",
    )
    parser.add_argument(
        "--loopback-servers",
        type=_servers,
        default=[S3S_FS, MOTO],
        metavar="NAME,...",
        help=f"S3 servers of the loopback and receive parts (default: {S3S_FS},{MOTO})",
    )
    parser.add_argument(
        "--moto-sizes",
        type=_sizes,
        default=[256, 1024],
        metavar="MiB,...",
        help="resource sizes of the loopback part on moto (default: 256,1024)",
    )
    parser.add_argument(
        "--p2-server",
        choices=(S3S_FS, MOTO),
        default=S3S_FS,
        help="S3 server of the capped, crowd and signed parts (default: %(default)s)",
    )
    parser.add_argument(
        "--receive-size",
        type=int,
        default=256,
        metavar="MiB",
        help="the receive part's object, on each --loopback-servers (default: %(default)s)",
    )
    parser.add_argument(
        "--capped-size", type=int, default=256, metavar="MiB", help="default: %(default)s"
    )
    parser.add_argument(
        "--capped-rate",
        type=float,
        default=20.0,
        metavar="MB/s",
        help="the proxy's rate per connection (default: %(default)s)",
    )
    parser.add_argument(
        "--capped-latency",
        type=float,
        default=20.0,
        metavar="ms",
        help="the proxy's added delay (default: %(default)s)",
    )
    parser.add_argument(
        "--crowd", type=int, default=50, metavar="N", help="concurrent loads (default: 50)"
    )
    parser.add_argument(
        "--crowd-size", type=int, default=16, metavar="MiB", help="default: %(default)s"
    )
    parser.add_argument(
        "--mount-size", type=int, default=256, metavar="MiB", help="P5's model (%(default)s)"
    )
    parser.add_argument(
        "--signed-size", type=int, default=256, metavar="MiB", help="default: %(default)s"
    )
    parser.add_argument(
        "--p3-sizes",
        type=_sizes,
        default=[512, 1024],
        metavar="MiB,...",
        help="payloads for P3 (default: 512,1024)",
    )
    parser.add_argument(
        "--p3-engines",
        type=_engines,
        default=["podman", "docker"],
        metavar="NAME,...",
        help="engines of P3 (default: podman,docker)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="64 MiB for the loopback, capped and P3 parts, 16 MiB per crowd load",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="measured runs per case, after 1 warm-up (default: 3)"
    )
    parser.add_argument(
        "--loader-env",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every loader (e.g. EDGELOADER_DOWNLOAD_INFLIGHT_MAX=33554432)",
    )
    parser.add_argument(
        "--s3s-fs",
        type=Path,
        default=DEFAULT_BINARY,
        metavar="PATH",
        help="the s3s-fs binary (default: .cache/s3s-fs/bin/s3s-fs, from make bench-service)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        metavar="DIR",
        help="where to put the temporary data, deleted at the end (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.p2_sizes, args.moto_sizes, args.p3_sizes = [64], [64], [64]
        args.capped_size, args.crowd_size, args.signed_size = 64, 16, 64
        args.mount_size = 32
    numbers = [args.runs, args.capped_size]
    numbers += [args.crowd, args.crowd_size]
    if min(numbers) < 1 or args.capped_rate <= 0 or args.capped_latency < 0:
        parser.error("counts, sizes and the rate must be positive")
    # The components run from the repository's folder (tests/support/harness).
    args.work_dir = args.work_dir.absolute()
    args.s3s_fs = args.s3s_fs.absolute()
    return args


def main() -> int:
    args = parse_args()
    # The bench's own publishing client would log a warning about JWT checks.
    logging.getLogger("edgeloader").setLevel(logging.ERROR)
    try:
        asyncio.run(bench(args))
    except KeyboardInterrupt:
        print("interrupted; processes stopped and temporary data removed", file=sys.stderr)
        return 130
    except (BenchError, HarnessError) as exc:
        print(f"bench_service: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
