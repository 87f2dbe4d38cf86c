"""A crash in the middle of a burst of refreshes must not corrupt the store.

The loader runs as a real process; it is killed with SIGKILL while agents
rotate refresh tokens as fast as they can, then started again on the same
state folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from edgeloader.auth.service import secret_hash
from edgeloader.auth.store import DB_FILE, ApiKeyRecord, AuthStore
from tests.support.harness.net import free_port

KEY_ID, SECRET = "00112233aabbccdd", "crash-test-secret"
API_KEY = f"elk_{KEY_ID}_{SECRET}"
AGENTS = 8


def start_loader(state: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RESOURCE_API_URL": "http://127.0.0.1:9",  # never called by these routes
        "EDGELOADER_STATE_DIR": str(state),
        "EDGELOADER_AUTH": "required",
    }
    # The log goes to a file: a pipe nobody reads fills up and blocks the loader.
    with log.open("ab") as out:
        argv = ["-m", "edgeloader", "serve", "--host", "127.0.0.1", "--port", str(port)]
        return subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


async def wait_healthy(
    http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = await asyncio.to_thread(log.read_text, errors="replace")
            raise AssertionError(f"the loader exited:\n{tail[-3000:]}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{url}/health") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError("loader did not start")


async def test_kill_during_refresh_burst_leaves_a_consistent_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = AuthStore(state)
    now = time.time()
    store.add_api_key(
        ApiKeyRecord.from_row((KEY_ID, "crash", "Operator", secret_hash(SECRET), now, None, None))
    )
    store.close()
    port = free_port()
    log = tmp_path / "loader.log"
    url = f"http://127.0.0.1:{port}"
    refreshes = 0
    enough = asyncio.Event()

    async with aiohttp.ClientSession() as http:
        proc = start_loader(state, port, log)
        try:
            await wait_healthy(http, url, proc, log)

            async def agent() -> None:
                nonlocal refreshes
                async with http.post(f"{url}/api/auth/token", json={"apiKey": API_KEY}) as r:
                    token = (await r.json())["refreshToken"]
                while True:
                    async with http.post(
                        f"{url}/api/auth/refresh", json={"refreshToken": token}
                    ) as r:
                        token = (await r.json())["refreshToken"]
                        refreshes += 1
                        if refreshes >= 200:
                            enough.set()

            agents = [asyncio.create_task(agent()) for _ in range(AGENTS)]
            await asyncio.wait_for(enough.wait(), timeout=120)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            results = await asyncio.gather(*agents, return_exceptions=True)
            assert all(isinstance(r, aiohttp.ClientError) for r in results), results
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        with sqlite3.connect(state / DB_FILE) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            # Every family has at most one live (unused, unrevoked) token: no
            # half-done rotation left two, or a used token without a successor.
            live = db.execute(
                "SELECT family, COUNT(*) FROM refresh_tokens"
                " WHERE used = 0 AND revoked = 0 GROUP BY family"
            ).fetchall()
            families = db.execute("SELECT COUNT(DISTINCT family) FROM refresh_tokens").fetchone()
        assert all(count == 1 for _, count in live)
        assert families == (AGENTS,)
        assert len(live) == AGENTS

        proc = start_loader(state, port, log)
        try:
            await wait_healthy(http, url, proc, log)
            async with http.post(f"{url}/api/auth/token", json={"apiKey": API_KEY}) as r:
                assert r.status == 200
                pair = await r.json()
            async with http.post(
                f"{url}/api/auth/refresh", json={"refreshToken": pair["refreshToken"]}
            ) as r:
                assert r.status == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert refreshes >= 200
