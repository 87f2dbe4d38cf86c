"""A capped link: tests/support/proxy.py's CuttingProxy with a rate per
connection and a delay, in a process of its own, so that pacing the bytes
takes no CPU or event-loop time from the loader or the client.

``python -m bench.service.throttle --target URL --rate B/S --latency S
--ready FILE`` serves until terminated; it writes its URL to FILE once it
listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.harness.net import wait_for
from tests.support.harness.processes import Child, clean_env, spawn
from tests.support.proxy import CuttingProxy


async def start_throttle(
    target: str,
    rate: int,
    latency: float,
    work: Path,
    logs: Path,
    cleanup: contextlib.ExitStack,
) -> tuple[Child, str]:
    """The proxy in front of ``target`` (an http URL); returns it and its URL."""
    ready = work / "throttle.url"
    ready.unlink(missing_ok=True)
    args = ["-m", "bench.service.throttle", "--target", target, "--rate", str(rate)]
    args += ["--latency", str(latency), "--ready", str(ready)]
    child = spawn("throttle", args, clean_env(), logs, cleanup)

    async def listening() -> bool:
        child.check_alive()
        return ready.exists() and ready.read_text().endswith("\n")

    await wait_for(listening, 30, failure="the throttling proxy did not start")
    return child, ready.read_text().strip()


async def serve(target: str, rate: int, latency: float, ready: Path) -> None:
    parts = urlsplit(target)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    async with CuttingProxy(host, port, rate=rate, latency=latency) as proxy:
        await asyncio.to_thread(ready.write_text, f"{proxy.url}\n")
        # How many bodies flow at once, for the log: how wide the loader went.
        last = None
        while True:
            now = (proxy.connections, proxy.streams, proxy.peak_streams, proxy.bytes_down // 10**6)
            if now != last:
                conns, streams, peak, mb = now
                print(f"connections {conns}, bodies now {streams}, at most {peak}, {mb} MB down")
                last = now
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description="a per-connection throttling TCP proxy")
    parser.add_argument("--target", required=True, help="http://HOST:PORT")
    parser.add_argument("--rate", type=int, required=True, help="bytes per second per connection")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added downstream")
    parser.add_argument("--ready", type=Path, required=True, help="file to write the URL to")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.target, args.rate, args.latency, args.ready))


if __name__ == "__main__":
    main()
