"""``GET /api/images`` and ``edgeloader images`` on a real engine: the
images an unlock loads and those functions run, one that is gone listed as
absent, for admins only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.cli import Cli
from tests.support.engines import EngineService, import_busybox_image, remove_image
from tests.support.functions import Api
from tests.support.stack import ADMIN, Stack

GONE = "localhost/edgeloader-images-gone:1"
#: Images an unlock must leave in the engine: one there, one not.
UNLOCK = ("localhost/edgeloader-images-unlock", "localhost/edgeloader-images-never")


async def test_the_images_of_unlock_and_functions(
    make_stack: Callable[..., Awaitable[Stack]], engine: EngineService, image: str, tmp_path: Path
) -> None:
    stack = await make_stack()
    settings = stack.settings(
        auth_mode="required", docker_host=engine.docker_host, api_services=UNLOCK
    )
    unlocked_id = import_busybox_image(engine, f"{UNLOCK[0]}:{settings.api_version}")
    await stack.start_loader(settings)
    api = Api(stack.http, stack.loader_url)
    api.admin = await api.login(ADMIN)
    api.operator = await api.login(("operator@example.org", "operator-password-1"))
    gone_id = import_busybox_image(engine, GONE)
    one = await api.deploy("one")
    await api.deploy("two")
    await api.deploy("lost", image=GONE)
    remove_image(engine, GONE)

    images = (await api.get("/api/images"))["images"]
    by_tag = {tag: i for i in images for tag in i["tags"]}
    used = by_tag[image]
    assert (used["id"], used["present"], used["unlock"]) == (one["imageId"], True, False)
    assert used["functions"] == [{"name": "one", "version": 1}, {"name": "two", "version": 1}]
    assert used["sizeBytes"] > 0
    assert used["createdAt"] > 0
    lost = by_tag[GONE]
    assert (lost["id"], lost["present"], lost["sizeBytes"]) == (gone_id, False, None)
    assert lost["functions"] == [{"name": "lost", "version": 1}]
    # An unlock's images come first, listed whether the engine has them or not.
    there, never = settings.expected_images
    assert [(i["tags"], i["id"], i["present"], i["unlock"]) for i in images[:2]] == [
        ([there], unlocked_id, True, True),
        ([never], None, False, True),
    ]
    assert images[0]["functions"] == []

    status, body, _ = await api.call("GET", "/api/images", api.operator)
    assert status == 403, body

    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(home, stack.loader_url)
    await cli.login(ADMIN)
    header, *rows = (await cli.ok("images")).text.splitlines()
    assert header.split() == ["IMAGE", "ID", "SIZE", "CREATED", "UNLOCK", "FUNCTIONS"]
    row = next(r for r in rows if r.startswith(f"{image} "))
    assert row.split()[1] == one["imageId"].removeprefix("sha256:")[:12]
    assert row.endswith("one v1, two v1")
    lost_row = next(r for r in rows if r.startswith(f"{GONE} "))
    assert " absent " in lost_row
    assert lost_row.endswith("lost v1")
    assert (await cli.ok("images", "--json")).json() == {"images": images}
