"""``python -m bench.service``: the options, the work folder, then P2 and P3."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from tests.support.harness.net import HarnessError
from tests.support.podman import available

from bench import service
from bench.service import BenchError, MiB, log
from bench.service.load import bench_p2
from bench.service.report import print_header, print_p2, print_p3
from bench.service.stack import start_upstream
from bench.service.unlock import bench_p3


def check_space(work_dir: Path, p2_sizes: list[int], p3_size: int | None) -> None:
    # moto keeps the parts and the object; P3 has the rootfs, the plain and
    # encrypted archives, the image in storage and the engine's temp copies.
    need = 3 * sum(p2_sizes) + (6 * p3_size if p3_size else 0) + 512 * MiB
    free = shutil.disk_usage(work_dir).free
    if free < need:
        raise BenchError(f"{work_dir}: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed")


async def bench(args: argparse.Namespace) -> None:
    p2_sizes = [] if args.only == "p3" else [s * MiB for s in args.p2_sizes]
    p3_size = None if args.only == "p2" else args.p3_size * MiB
    if p3_size is not None and not available():
        raise BenchError("P3 needs podman, runc and busybox-static: run `make engine`")
    check_space(args.work_dir, p2_sizes, p3_size)
    work = Path(tempfile.mkdtemp(prefix="edgeloader-bench-", dir=args.work_dir))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        for sub in ("logs", "tmp"):
            (work / sub).mkdir()
        log(f"work folder {work}")
        upstream = await start_upstream(work, cleanup)
        p2 = await bench_p2(upstream, p2_sizes, args.runs, cleanup) if p2_sizes else []
        p3 = await bench_p3(upstream, p3_size, args.runs, work, cleanup) if p3_size else None
    print_header()
    if p2:
        print_p2(p2, args.runs)
    if p3 is not None:
        print_p3(p3, args.runs)


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
        "--p2-sizes",
        type=_sizes,
        default=[256, 1024],
        metavar="MiB,...",
        help="resource sizes for P2 (default: 256,1024)",
    )
    parser.add_argument(
        "--p3-size", type=int, default=1024, metavar="MiB", help="payload for P3 (default: 1024)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="64 MiB everywhere (overrides the sizes)"
    )
    parser.add_argument("--only", choices=("p2", "p3"), help="run one benchmark only")
    parser.add_argument(
        "--runs", type=int, default=3, help="measured runs per case, after 1 warm-up (default: 3)"
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
        args.p2_sizes, args.p3_size = [64], 64
    if args.runs < 1 or args.p3_size < 1:
        parser.error("--runs and --p3-size must be positive")
    # The components run from the repository's folder (tests/support/harness).
    args.work_dir = args.work_dir.absolute()
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
