"""The engine's images that matter to the box (docs/api.md, ``GET
/api/images``): those an unlock loads and those functions run.

An unlock's images are the ones it must leave in the engine (the
services' ``{repo}:{api_version}``) and the ones its last run loaded; a
function's is the image ID its current version was pinned to at deploy.
Each is looked up in the engine: one that is gone (the engine was reset,
or someone removed it) is listed as absent, since that is what an operator
needs to see (the function fails until it is deployed again or the
unlock runs again). Other images in the engine are not the box's and are
not listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import Field

from edgeloader.errors import NotFound
from edgeloader.functions.records import FunctionRecord
from edgeloader.functions.service import FunctionService
from edgeloader.services.unlock import UnlockManager
from edgeloader.upstream.engine import Engine
from edgeloader.wire import Record

__all__ = ["EngineImage", "FunctionUse", "list_images"]


class FunctionUse(Record):
    name: str
    version: int


class EngineImage(Record):
    """An image of the box, as the engine has it (or had it)."""

    id: str | None = Field(
        description="the engine's image ID; for an absent image a function runs, the ID it "
        "was pinned to; else null"
    )
    tags: list[str] = Field(description="its references: the engine's tags, or those asked for")
    present: bool = Field(description="whether the engine has it")
    size_bytes: int | None = Field(description="as the engine reports it; null if absent")
    created_at: float | None = Field(description="epoch seconds; null if absent or unknown")
    unlock: bool = Field(description="one of the images an unlock loads")
    functions: list[FunctionUse] = Field(
        description="the deployed functions whose current version runs it"
    )


@dataclass
class _Entry:
    info: dict[str, Any] | None  # the engine's; None: absent
    pinned: str | None = None  # the ID a function was pinned to
    asked: list[str] = field(default_factory=list)  # the references, when absent
    unlock: bool = False
    functions: list[FunctionUse] = field(default_factory=list)


async def list_images(
    engine: Engine, unlock: UnlockManager, functions: FunctionService
) -> list[EngineImage]:
    """The images an unlock loads and those ``functions`` run, one entry
    per engine image (an absent one per reference), unlock's first."""
    unlock_refs = [*unlock.session.settings.expected_images, *unlock.status.images]
    return await _images(engine, unlock_refs, await functions.all())


async def _images(
    engine: Engine, unlock_refs: list[str], functions: list[FunctionRecord]
) -> list[EngineImage]:
    entries: dict[str, _Entry] = {}

    async def entry(ref: str, pinned: str | None = None) -> _Entry:
        try:
            info: dict[str, Any] | None = await engine.inspect_image(pinned or ref)
        except NotFound:
            info = None
        if info is not None:
            return entries.setdefault(str(info.get("Id")), _Entry(info))
        found = entries.setdefault(f"absent:{pinned or ref}", _Entry(None, pinned))
        if ref not in found.asked:
            found.asked.append(ref)
        return found

    for ref in dict.fromkeys(unlock_refs):
        (await entry(ref)).unlock = True
    for function in functions:
        use = FunctionUse(name=function.name, version=function.version)
        (await entry(function.image, function.image_id or None)).functions.append(use)
    return [_record(item) for item in entries.values()]


def _record(item: _Entry) -> EngineImage:
    info = item.info
    if info is None:
        return EngineImage(
            id=item.pinned,
            tags=item.asked,
            present=False,
            size_bytes=None,
            created_at=None,
            unlock=item.unlock,
            functions=item.functions,
        )
    return EngineImage(
        id=str(info.get("Id")),
        tags=sorted(str(tag) for tag in info.get("RepoTags") or [] if tag != "<none>:<none>"),
        present=True,
        size_bytes=int(info["Size"]) if isinstance(info.get("Size"), int) else None,
        created_at=_epoch(info.get("Created")),
        unlock=item.unlock,
        functions=item.functions,
    )


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _epoch(created: Any) -> float | None:
    """The engine's ``Created``: an RFC 3339 time (with up to nanoseconds),
    or epoch seconds from some engines."""
    if isinstance(created, int | float):
        return float(created)
    if not isinstance(created, str):
        return None
    text = _FRACTION.sub(r"\1", created.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
