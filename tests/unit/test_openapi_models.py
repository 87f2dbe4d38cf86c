"""The documented models and the code that answers or decides agree.

- The JSON the services shape (records, token pairs, keys, the audit, the
  unlock and pre-staging states) is exactly what the answer models say:
  every field, no more.
- A function's fields are checked in the service (so that a refused
  deploy is audited); the document's schema for them must accept exactly
  what ``functions.spec`` accepts.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from edgeloader.auth.signing_key import SigningKey
from edgeloader.auth.store import ApiKeyRecord
from edgeloader.auth.store import AuditEntry as AuditRow
from edgeloader.auth.tokens import Claims
from edgeloader.auth.tokens import TokenPair as Pair
from edgeloader.errors import EdgeloaderError
from edgeloader.functions import records
from edgeloader.functions.service import RunOutput as Output
from edgeloader.functions.spec import FunctionSpec, Limits, function_name, parse_spec
from edgeloader.services.prefetch import PrefetchStatus
from edgeloader.services.unlock import UnlockState, UnlockStatus
from edgeloader.web.models import auth, azaion, functions, prefetch

CORES = 4


def exactly(model: type[BaseModel], data: dict[str, Any]) -> None:
    """``data`` validates, and the model's serialised fields are its keys."""
    parsed = model.model_validate(data)
    assert set(parsed.model_dump(by_alias=True)) == set(data), model.__name__
    schema = model.model_json_schema(mode="serialization")
    jsonschema_rs.validate(schema, json.loads(json.dumps(data)))


SPEC = FunctionSpec(
    image="localhost/x:1",
    command=("sh", "-c", "true"),
    env={"A": "b"},
    limits=Limits(memory_mb=64),
)


def test_function_and_run_records() -> None:
    record = records.FunctionRecord("x", 2, SPEC, "sha256:ab", 1.0, 2.0)
    exactly(functions.FunctionRecord, record.as_json())
    bare = records.FunctionRecord("y", 1, FunctionSpec(image="i"), "sha256:cd", 1.0, 1.0)
    exactly(functions.FunctionRecord, bare.as_json())
    for status in records.RunStatus:
        run = records.RunRecord("r" * 32, "x", 1, "i", status, 1.0)
        exactly(functions.RunRecord, run.as_json())
    ended = records.RunRecord(
        "r" * 32, "x", 1, "i", records.RunStatus.SUCCEEDED, 1.0, 0, None, 1.5, 2.0, 500, {"a": [1]}
    )
    exactly(functions.RunRecord, ended.as_json())
    exactly(functions.RunRecords, {"runs": [ended.as_json()]})
    exactly(functions.Executions, {"executions": [ended.as_json()], "total": 1})
    exactly(functions.FunctionRecords, {"functions": [record.as_json()]})
    stats = records.Stats(3, 1, 1, 1, 0, 10, 20, 5.0)
    exactly(functions.RunStats, stats.as_json())
    exactly(functions.RunStats, records.Stats(0, 0, 0, 0, 0, None, None, None).as_json())
    exactly(functions.RunOutput, Output("out", "err", [{"level": "info"}], False).as_json())
    exactly(functions.RunOutput, Output("", "", None, True).as_json())


def test_tokens_keys_and_the_audit() -> None:
    claims = Claims("user:a", "Admin", "refresh", "j", "f", 9.0)
    pair = Pair("access", "refresh", 900, "Admin", claims)
    exactly(auth.TokenPair, pair.as_json())
    exactly(azaion.LoggedIn, {"status": "ok", **pair.as_json()})
    assert azaion.LoggedIn().model_dump(by_alias=True, exclude_none=True) == {"status": "ok"}
    key = ApiKeyRecord("0123456789abcdef", "k", "Operator", "hash", 1.0, None, None)
    exactly(auth.ApiKey, key.public())
    exactly(auth.NewApiKey, {**key.public(), "apiKey": "elk_x_y"})
    exactly(auth.ApiKeys, {"keys": [key.public()]})
    row = AuditRow(1.0, "user:a", "Admin", "load", "POST /load/x", "models/x", "ok", 10, "")
    exactly(auth.AuditEntry, row.as_dict())
    signing = SigningKey(Ed25519PrivateKey.generate(), "kid")
    exactly(auth.Jwks, {"keys": [signing.jwk()]})


def test_unlock_and_prefetch_states() -> None:
    for state in UnlockState:
        status = UnlockStatus(state, error=None, bytes_done=1, bytes_total=2)
        exactly(azaion.UnlockProgress, dict(status.event().data))
    job = PrefetchStatus("models", "m.bin", "running", 1, 2, None)
    exactly(prefetch.PrefetchState, job.as_json())


# -- a function's fields: the document against functions.spec -------------------------

BASE = {"name": "fn", "image": "localhost/fn:1"}
BODIES: list[dict[str, Any]] = [
    BASE,
    {**BASE, "command": None, "env": None, "limits": None},
    {**BASE, "command": ["sh", "-c", "true"], "env": {"A_1": "x y"}},
    {"image": "localhost/fn:1"},
    {"name": "fn"},
    {**BASE, "name": "Bad"},
    {**BASE, "name": "-x"},
    {**BASE, "name": "x" * 64},
    {**BASE, "name": 5},
    {**BASE, "image": "has space"},
    {**BASE, "image": 1},
    {**BASE, "privileged": True},
    {**BASE, "command": []},
    {**BASE, "command": [1]},
    {**BASE, "command": ["a\x00b"]},
    {**BASE, "command": ["x"] * 257},
    {**BASE, "command": "sh"},
    {**BASE, "env": {"1A": "x"}},
    {**BASE, "env": {"A": "x\ny"}},
    {**BASE, "env": {"A": 1}},
    {**BASE, "env": {"EDGELOADER_RUN_ID": "x"}},
    {**BASE, "env": {f"V{i}": "x" for i in range(257)}},
    {**BASE, "env": []},
    {**BASE, "limits": []},
    {**BASE, "limits": {"swap": 1}},
    {**BASE, "limits": {"cpus": 0.04}},
    {**BASE, "limits": {"cpus": 0.05}},
    {**BASE, "limits": {"cpus": CORES}},
    {**BASE, "limits": {"cpus": True}},
    {**BASE, "limits": {"cpus": "1"}},
    {**BASE, "limits": {"pids": "64"}},
    {**BASE, "limits": {"memoryMb": True}},
    *(
        {**BASE, "limits": {field: value}}
        for field, low, high in (
            ("memoryMb", 16, 4096),
            ("pids", 8, 4096),
            ("timeoutS", 1, 3600),
            ("tmpfsMb", 1, 1024),
        )
        for value in (low - 1, low, high, high + 1)
    ),
    *(
        {**BASE, field: value}
        for field, low, high in (("concurrency", 1, 16), ("queue", 0, 256), ("user", 1, 65535))
        for value in (low - 1, low, high, high + 1, str(low), False)
    ),
]
# Not in the table: 64.0 for an integer. The service refuses it, but JSON
# Schema cannot tell it from 64 (an "integer" is any number without a
# fraction), so the document cannot say so.


def service_accepts(body: dict[str, Any], *, with_name: bool, with_image: bool = True) -> bool:
    try:
        rest = dict(body)
        if with_name:
            function_name(rest.pop("name"))
        parse_spec(rest, with_image=with_image, cores=CORES)
    except (EdgeloaderError, KeyError):
        return False
    return True


def document_accepts(model: type[BaseModel], body: dict[str, Any]) -> bool:
    schema = model.model_json_schema(mode="validation")
    return jsonschema_rs.Draft202012Validator(schema).is_valid(body)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: json.dumps(b)[:60])
def test_the_documented_deploy_body_accepts_what_the_service_accepts(body: dict[str, Any]) -> None:
    assert document_accepts(functions.FunctionDeploy, body) == service_accepts(body, with_name=True)
    rest = {k: v for k, v in body.items() if k != "name"}
    assert document_accepts(functions.FunctionUpdate, rest) == service_accepts(
        rest, with_name=False
    )
    settings = {k: v for k, v in rest.items() if k != "image"}
    assert document_accepts(functions.FunctionSettings, settings) == service_accepts(
        settings, with_name=False, with_image=False
    )
