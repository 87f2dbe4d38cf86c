"""Route handlers, drop-in compatible with Azaion.Loader.

Handlers parse and validate the request (through the models of
``web.models``, which also make the OpenAPI document), call a pipeline and
shape the answer; the work itself lives in ``edgeloader.services``.
"""

from __future__ import annotations

import contextlib
import functools
import logging

from aiohttp import web

from edgeloader.errors import (
    EdgeloaderError,
    IntegrityError,
    InvalidRequest,
    ValidationFailed,
)
from edgeloader.names import safe_folder, safe_name
from edgeloader.roles import ADMINS, UPLOADERS, Role
from edgeloader.services.unlock import UnlockRequest, UnlockStatus
from edgeloader.web.bodies import Form, read_json, read_query
from edgeloader.web.guards import (
    AUDIT_BYTES,
    AUDIT_OUTCOME,
    AUDIT_RESOURCE,
    audited,
    azaion,
    client_address,
    finishes_without_client,
    optional_token,
    principal,
    roles,
)
from edgeloader.web.models.azaion import (
    NAME_SCHEMA,
    CredentialsBody,
    Healthy,
    LoadBody,
    LoggedIn,
    ServiceStatus,
    UnlockStarted,
    Uploaded,
    UploadForm,
    UploadQuery,
)
from edgeloader.web.models.base import respond
from edgeloader.web.openapi import Body, Param, Reply, documented
from edgeloader.web.state import services

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
DEFAULT_FOLDER = "models"


FILENAME = Param("the resource's name", {"type": "string", **NAME_SCHEMA})
THROTTLED = "too many failed attempts (counted with the login routes), with Retry-After"


@routes.get("/health")
@documented("Liveness", tag="azaion", answers={200: Healthy})
async def health(request: web.Request) -> web.Response:
    return Healthy().response()


@routes.get("/status")
@azaion
@documented("The service's state", tag="azaion", answers={200: ServiceStatus})
async def status(request: web.Request) -> web.Response:
    svc = services(request)
    cache_dir = svc.settings.cache_dir
    return ServiceStatus(
        authenticated=svc.session.api.authenticated,
        model_cache_dir=str(cache_dir) if cache_dir else None,
    ).response()


@routes.post("/login")
@optional_token
@documented(
    "Log the device in upstream",
    tag="azaion",
    body=CredentialsBody,
    answers={200: LoggedIn},
    errors={
        401: "invalid email or password",
        403: "changing the device's user needs an Admin or ApiAdmin token or user",
        429: THROTTLED,
        502: "the Resource API is unreachable or failing",
    },
    description="The device keeps the credentials and its upstream token. In `required` "
    "mode the answer also carries the caller's token pair.",
)
async def login(request: web.Request) -> web.Response:
    """Logs the device in upstream; in ``required`` mode also answers with
    a token pair for the caller."""
    body = await read_json(request, CredentialsBody)
    email, password = body.email, body.password
    svc = services(request)
    caller = principal(request)
    pair = await svc.auth.login(
        email,
        password,
        client_address(request),
        "POST /login",
        lambda: svc.session.login(email, password, caller_role=caller.role if caller else None),
        issue=svc.settings.auth_mode == "required",
    )
    return LoggedIn.model_validate(pair.wire() if pair else {}).response()


@routes.post("/load/{filename}")
@azaion
@audited("load")
@documented(
    "Load a resource, decrypted, as a stream",
    tag="azaion",
    body=LoadBody,
    path={"filename": FILENAME},
    answers={
        200: Reply(
            "The plaintext, streamed with an exact Content-Length; a failure after the "
            "headers cuts the connection (a body shorter than Content-Length)",
            media_type="application/octet-stream",
            schema={"type": "string", "format": "binary"},
            headers={"Content-Disposition": 'attachment; filename="NAME"'},
        )
    },
    errors={
        400: "an unsafe name or folder, or a body filename that differs from the path's",
        401: "the device is not logged in upstream",
        404: "no such resource",
        502: "the Resource API or the CDN failed, `decryption failed`, or "
        "`integrity: <reason>` under a signed release manifest",
    },
)
async def load_resource(request: web.Request) -> web.StreamResponse:
    name = safe_name(request.match_info["filename"], "filename")
    body = await read_json(request, LoadBody)
    if body.filename not in (None, "", name):
        raise InvalidRequest("filename in the path and in the body differ")
    folder = safe_folder(body.folder or DEFAULT_FOLDER)
    request[AUDIT_RESOURCE] = f"{folder}/{name}"
    svc = services(request)
    try:
        stream = await svc.loads.open(folder, name)
    except IntegrityError as exc:
        request[AUDIT_OUTCOME] = exc.detail
        raise
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name}"',
        }
    )
    response.content_length = stream.length
    sent = 0
    async with contextlib.aclosing(stream.chunks) as chunks:
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
                request[AUDIT_BYTES] = sent
        except ConnectionError:
            request[AUDIT_OUTCOME] = "client disconnected"
            log.info("client left %s/%s after %d of %d bytes", folder, name, sent, stream.length)
            return response
        except EdgeloaderError as exc:
            # Headers are out: the only honest signal left is a cut connection,
            # which the client sees as a body shorter than Content-Length.
            log.error("load of %s/%s failed after %d bytes: %s", folder, name, sent, exc.detail)
            request[AUDIT_OUTCOME] = f"failed mid-stream: {exc.detail}"
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write_eof()
    log.info("loaded %s/%s from %s: %d bytes", folder, name, stream.source, sent)
    return response


@routes.post("/upload/{filename}")
@azaion
@roles(*UPLOADERS)
@audited("upload")
@documented(
    "Upload a resource: encrypted, split and published",
    tag="azaion",
    body=Body(UploadForm, "multipart/form-data"),
    query=UploadQuery,
    path={"filename": FILENAME},
    answers={200: Uploaded},
    errors={
        400: "an unsafe name or folder, or a malformed multipart body",
        401: "the device is not logged in upstream",
        404: "the folder does not exist on the CDN",
        413: "larger than the upload limit",
        422: "not multipart, no file field `data` (or two), or a `folder` field after "
        "the file that differs from the one used",
        502: "the CDN or the Resource API failed",
    },
    description="On a box that trusts a publisher, what it uploads is loadable only once "
    "a signed release manifest lists it.",
)
async def upload_resource(request: web.Request) -> web.Response:
    name = safe_name(request.match_info["filename"], "filename")
    svc = services(request)
    folder = safe_folder(read_query(request, UploadQuery).folder or DEFAULT_FOLDER)
    request[AUDIT_RESOURCE] = f"{folder}/{name}"
    form = await Form.open(request, "a file field 'data'")
    while (part := await form.next()) is not None:
        if part.name == "folder":
            folder = safe_folder((await form.text(part)).strip())
            request[AUDIT_RESOURCE] = f"{folder}/{name}"
        elif part.name == "data":
            break
        else:
            await form.skip(part)
    else:
        raise ValidationFailed("multipart field 'data' (the file) is required")

    async def rest_of_form() -> None:
        """Fields after the file may not contradict what was used."""
        while (late := await form.next()) is not None:
            if late.name == "data":
                raise ValidationFailed("only one file field 'data' is allowed")
            if late.name == "folder" and safe_folder((await form.text(late)).strip()) != folder:
                raise ValidationFailed("the 'folder' field must come before the file")
            await form.skip(late)

    chunks = form.chunks(part, svc.settings.chunk_size, svc.settings.max_upload_bytes)
    done = await svc.uploads.upload(
        await svc.session.cdn(),
        svc.session.api,
        folder,
        name,
        chunks,
        part_size=svc.settings.upload_part_size,
        fmt=svc.settings.upload_format,
        before_publish=rest_of_form,
        publishing=functools.partial(finishes_without_client, request),
    )
    request[AUDIT_BYTES] = done.plaintext_bytes
    return Uploaded(filename=name, folder=folder, size=done.plaintext_bytes).response()


@routes.post("/unlock")
@azaion
@roles(*ADMINS, Role.COMPANION_PC)
@audited("unlock")
@documented(
    "Start the unlock of the service images",
    tag="azaion",
    body=CredentialsBody,
    answers={200: UnlockStarted},
    errors={404: "the image archive is missing", 429: THROTTLED},
    description="Runs in the background: follow it with GET /unlock/status or the event "
    "stream. `ready` at once when every expected image is in the engine, and the current "
    "state while one runs, both without looking at the credentials.",
)
async def unlock(request: web.Request) -> web.Response:
    body = await read_json(request, CredentialsBody)
    svc = services(request)
    request[AUDIT_RESOURCE] = str(svc.settings.images_path)
    caller = principal(request)
    status = await svc.unlock.start(
        UnlockRequest(
            body.email,
            body.password,
            client_address(request),
            caller.role if caller else None,
        )
    )
    return UnlockStarted(state=status.state).response()


@routes.get("/unlock/status")
@azaion
@documented("The unlock's progress", tag="azaion", answers={200: UnlockStatus})
async def unlock_status(request: web.Request) -> web.Response:
    return respond(services(request).unlock.status)
