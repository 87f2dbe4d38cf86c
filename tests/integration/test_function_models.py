"""Models in the sandbox, on each engine: a function reads the model the
box delivers, verified and decrypted once into memory, read-only at
``/models/FOLDER/NAME`` (docs/functions.md, "Models")."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeloader.functions.models import ModelStore
from edgeloader.web.state import SERVICES
from tests.support.engines import EngineService
from tests.support.functions import Api, sh
from tests.support.harness.s3 import s3_client
from tests.support.releases import (
    Publisher,
    artifact_of,
    forge_v2,
    publish_segments,
    publish_v2,
)
from tests.support.stack import ADMIN, Stack, pattern

MiB = 1 << 20

# Hashes the model named by $F, tries to write to it, and says what it saw.
HASH = """
sum=$(busybox sha256sum "$F" | busybox cut -d' ' -f1)
if ( : >> "$F" ) 2>/dev/null; then mount=writable; else mount=read-only; fi
printf '{"sha256":"%s","mount":"%s","models":"%s"}' "$sum" "$mount" "$EDGELOADER_MODELS" \
  > result.json
"""

#: 64 bytes no file on a disk may hold: the test scans for them.
MARKER = hashlib.sha512(b"edgeloader model plaintext marker").digest()


def model_data(size: int) -> bytes:
    body = bytearray(pattern(size))
    for at in range(0, size - len(MARKER), MiB):
        body[at : at + len(MARKER)] = MARKER
    return bytes(body)


async def model_api(stack: Stack, engine: EngineService, **overrides: Any) -> Api:
    """A loader whose device is logged in upstream, with an admin's token."""
    model_memory_max = overrides.pop("model_memory_max", None)
    settings = stack.settings(auth_mode="required", docker_host=engine.docker_host, **overrides)
    if model_memory_max is not None:
        functions = replace(settings.functions, model_memory_max=model_memory_max)
        settings = settings.with_overrides(functions=functions)
    await stack.start_loader(settings)
    await stack.login()
    api = Api(stack.http, stack.loader_url)
    api.admin = await api.login(ADMIN)
    return api


def store_of(stack: Stack) -> ModelStore:
    return stack.runners[-1].app[SERVICES].functions.models


async def deploy_hash(api: Api, stack: Stack, name: str, model: str, **fields: Any) -> None:
    await api.deploy(
        name,
        command=sh(HASH),
        env={"F": f"/models/{stack.bucket}/{model}"},
        models=[{"folder": stack.bucket, "name": model}],
        **fields,
    )


def release(publisher: Publisher, name: str, ct: bytes, version: int = 1) -> str:
    """Publishes the segment list and a manifest of ``ct``; its identity."""
    stack = publisher.stack
    publish_segments(stack, name, ct)
    artifact = artifact_of(ct)
    publisher.release(version, {f"{stack.bucket}/{name}": artifact})
    return artifact.sha256


def files_holding(marker: bytes, roots: list[Path]) -> list[str]:
    """Files on a disk (not a tmpfs) under ``roots`` that hold ``marker``."""
    memory = []
    with open("/proc/self/mountinfo", encoding="utf-8") as lines:
        for line in lines:
            fields = line.split(" ")
            if fields[fields.index("-") + 1] in ("tmpfs", "ramfs", "proc", "sysfs"):
                memory.append(fields[4] + "/")
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            if any((folder + "/").startswith(point) for point in memory):
                dirs[:] = []
                continue
            for name in files:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as handle:
                        tail = b""
                        while piece := handle.read(1 << 20):
                            if marker in tail + piece:
                                found.append(path)
                                break
                            tail = piece[-len(marker) :]
                except OSError:
                    continue
    return found


async def test_a_v1_model_is_read_verified_read_only_and_never_on_disk(
    make_stack: Any, engine: EngineService, image: str, tmp_path: Path
) -> None:
    stack: Stack = await make_stack()
    data = model_data(3 * MiB + 5)
    stack.publish("m.bin", data)
    api = await model_api(stack, engine)
    await deploy_hash(api, stack, "hash", "m.bin", concurrency=2)
    record = await api.get("/api/functions/hash")
    assert record["models"] == [{"folder": stack.bucket, "name": "m.bin"}]

    # Two runs at once: one store entry, decrypted once.
    runs = await asyncio.gather(api.invoke("hash"), api.invoke("hash"))
    for run in runs:
        assert run["status"] == "succeeded", run
        assert run["result"] == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "mount": "read-only",
            "models": "/models",
        }
        assert len(run["models"]) == 1
    assert runs[0]["models"] == runs[1]["models"]
    store = store_of(stack)
    assert store.fills == 1
    assert store.used == len(data)
    assert files_holding(MARKER, [tmp_path, engine.base_dir]) == []
    # The audit names the model each invoke mounted.
    entries = (await api.get("/api/audit?limit=100"))["entries"]
    invokes = [e for e in entries if e["action"] == "function.invoke"]
    assert len(invokes) == 2
    assert all(runs[0]["models"][0] in e["detail"] for e in invokes)


async def test_a_v2_model_under_a_release_mounts_with_the_manifests_identity(
    publisher: Publisher, engine: EngineService, image: str
) -> None:
    stack = publisher.stack
    data = model_data(2 * MiB + 17)
    identity = release(publisher, "m.bin", publish_v2(stack, "m.bin", data))
    api = await model_api(stack, engine, publisher_key=publisher.public)
    await deploy_hash(api, stack, "hash", "m.bin")
    run = await api.invoke("hash")
    assert run["status"] == "succeeded", run
    assert run["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert run["models"] == [identity]


async def test_a_forged_model_fails_the_run_before_its_container_starts(
    publisher: Publisher, engine: EngineService, image: str
) -> None:
    stack = publisher.stack
    data = pattern(40 * 65536)
    ct = publish_v2(stack, "m.bin", data)
    release(publisher, "m.bin", ct)
    forged, _ = forge_v2(ct, data, 20)  # the genuine header, the forger's chunks
    small_size = len((stack.api_dir / "resources" / stack.bucket / "m.bin.small").read_bytes())
    s3_client(stack.s3_endpoint).put_object(
        Bucket=stack.bucket, Key="m.bin.big", Body=forged[small_size:]
    )
    api = await model_api(stack, engine, publisher_key=publisher.public, cache_dir=None)
    await deploy_hash(api, stack, "hash", "m.bin")
    run = await api.invoke("hash")
    assert run["status"] == "failed", run
    assert run["error"].startswith(f"model {stack.bucket}/m.bin: integrity: hash"), run["error"]
    assert run["exitCode"] is None  # no container ran
    assert (run["cpuMs"], run["models"]) == (None, [])
    store = store_of(stack)
    assert (store.used, store.fills) == (0, 0)
    assert list(store.root.iterdir()) == []  # nothing partial left either


async def test_the_budget_refuses_what_cannot_fit_and_evicts_what_no_run_uses(
    make_stack: Any, engine: EngineService, image: str
) -> None:
    stack: Stack = await make_stack()
    stack.publish("big.bin", pattern(6 * MiB))
    stack.publish("a.bin", pattern(3 * MiB))
    stack.publish("b.bin", pattern(3 * MiB + 1))
    api = await model_api(stack, engine, model_memory_max=4 * MiB)
    for function, model in (("big", "big.bin"), ("a", "a.bin"), ("b", "b.bin")):
        await deploy_hash(api, stack, function, model)
    run = await api.invoke("big")
    assert (run["status"], run["error"]) == (
        "failed",
        f"model {stack.bucket}/big.bin: does not fit the model memory budget "
        "(6 MiB needed, 4 MiB free)",
    )
    assert (await api.invoke("a"))["status"] == "succeeded"
    assert (await api.invoke("b"))["status"] == "succeeded"  # a, idle, gave way
    store = store_of(stack)
    assert (store.fills, store.used) == (2, 3 * MiB + 1)
    assert (await api.invoke("a"))["status"] == "succeeded"  # back again, b evicted
    assert store.fills == 3


async def test_a_model_missing_upstream_fails_the_run_clearly(
    make_stack: Any, engine: EngineService, image: str
) -> None:
    stack: Stack = await make_stack()
    api = await model_api(stack, engine)
    await deploy_hash(api, stack, "hash", "absent.bin")
    run = await api.invoke("hash")
    assert run["status"] == "failed"
    assert run["error"] == f"model {stack.bucket}/absent.bin: not found"
    # A load of it says the same, without the name of the part the API was asked for.
    status, body, _ = await api.call(
        "POST", "/load/absent.bin", api.admin, json={"folder": stack.bucket}
    )
    assert (status, body["detail"]) == (404, f"model {stack.bucket}/absent.bin: not found")
