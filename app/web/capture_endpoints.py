"""POST /v1/capture/sessions and GET /v1/capture/sessions/{session_id}: a capture session
for the authenticated user, created with the partner's key, read back by its owner only.
Served only with BROKER_CAPTURE_SESSIONS=on (off, the paths are 404 and not documented)."""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app.capture.wiring import Capture
from app.config import Settings
from app.errors import BrokerError, InvalidRequest, UpstreamUnusable
from app.observability import metrics
from app.observability.fingerprints import fingerprint
from app.services import Services, services_of
from app.tokens.lifetime import requested_lifetime
from app.videodb.answers import SESSION_ID
from app.web.problems import NO_STORE, documented_problems
from app.web.request_body import read_body
from app.web.request_context import audit_log

SESSIONS_PATH = "/v1/capture/sessions"
MAX_BODY_BYTES = 4096
MAX_METADATA_BYTES = 2048
# Objects and arrays inside one another, metadata itself the first: far past what anyone
# means, far short of where Python's JSON (about 1,000) or orjson (255) give up.
MAX_METADATA_DEPTH = 64
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
WS_CONNECTION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)
_FIELDS = frozenset({"metadata", "ws_connection_id", "expires_in"})

router = APIRouter(tags=["capture sessions"])


class CaptureSessionRequest(BaseModel):
    """What a client may ask for; the end user, callback and collection are the server's."""

    model_config = {"extra": "forbid"}

    metadata: dict[str, Any] | None = Field(
        None, description=f"any JSON object, at most {MAX_METADATA_BYTES} bytes as compact JSON"
    )
    ws_connection_id: str | None = Field(
        None, pattern=WS_CONNECTION_ID.pattern, min_length=1, max_length=128
    )
    expires_in: int | None = Field(None, description="the token's lifetime, as for the token")


class CaptureSessionCreated(BaseModel):
    """A capture session and the token to start capturing with."""

    session_id: str
    status: str
    collection_id: str
    token: str = Field(description="the st- session token")
    expires_at: int = Field(description="epoch seconds when the token stops working")
    expires_in: int = Field(description="seconds left at the time of the response")


class CaptureSessionView(BaseModel):
    """What the owner may see of a capture session (each field where VideoDB gave it)."""

    session_id: str
    status: str | None = None
    collection_id: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: str | int | float | None = None
    export_status: str | None = None
    exported_video_id: str | None = None
    primary_video_channel_id: str | None = None
    channels: list[Any] | None = None


def creation_request(
    body: bytes, settings: Settings
) -> tuple[int, str | None, dict[str, Any] | None]:
    """(lifetime, ws_connection_id, metadata) of a creation body, or a 422 naming the rule."""
    if not body or body.strip() == b"{}":
        return settings.token_default_ttl, None, None
    try:
        document: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest("The body must be a JSON object.") from None
    if not isinstance(document, dict):
        raise InvalidRequest("The body must be a JSON object.")
    if set(document) - _FIELDS:
        raise InvalidRequest(
            "Only metadata, ws_connection_id and expires_in may be sent; the end user, the "
            "callback and the collection are the server's."
        )
    ttl = requested_lifetime(document, settings)
    ws_connection_id = document.get("ws_connection_id")
    if ws_connection_id is not None and not (
        isinstance(ws_connection_id, str) and WS_CONNECTION_ID.fullmatch(ws_connection_id)
    ):
        raise InvalidRequest("ws_connection_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    metadata = document.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata must be a JSON object.")
        if _deeper_than(metadata, MAX_METADATA_DEPTH):
            raise InvalidRequest(
                f"metadata may nest objects and arrays at most {MAX_METADATA_DEPTH} deep."
            )
        try:  # NaN and Infinity parse, but are no JSON VideoDB could read
            compact = json.dumps(
                metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except ValueError:
            raise InvalidRequest("metadata must be plain JSON (no NaN or Infinity).") from None
        if len(compact) > MAX_METADATA_BYTES:
            raise InvalidRequest(f"metadata may hold at most {MAX_METADATA_BYTES} bytes of JSON.")
    return ttl, ws_connection_id, metadata


def _deeper_than(value: object, limit: int) -> bool:
    """Whether objects and arrays nest past `limit` (counted without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def json_body(document: dict[str, Any]) -> bytes:
    """JSON of what VideoDB stored, whatever it holds; never an encoder's error (a 500).

    orjson writes nearly every answer. What it refuses, the standard library writes:
    integers past 64 bits as they are, lone surrogates (no UTF-8 can carry them) as U+FFFD,
    NaN and Infinity as null (as orjson does). Nested too deep even for that, it is a 502.
    """
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        pass
    try:
        text = json.dumps(
            _portable(document), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (ValueError, RecursionError):
        raise UpstreamUnusable("VideoDB's record of this session cannot be passed on.") from None
    return text.encode()


def _portable(value: object) -> object:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_portable(key): _portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable(item) for item in value]
    return value


def _capture(services: Services) -> Capture:
    """The capture bundle (its routes are mounted only when it exists)."""
    if services.capture is None:
        raise RuntimeError("capture sessions are off: their routes are not mounted")
    return services.capture


@router.post(
    SESSIONS_PATH,
    status_code=201,
    response_model=CaptureSessionCreated,
    summary="Create a capture session for the authenticated user, with a token to use it",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": CaptureSessionRequest.model_json_schema()}},
        }
    },
    responses={
        201: {
            "description": "created",
            "headers": {
                "Location": {
                    "description": "/v1/capture/sessions/<session_id>",
                    "schema": {"type": "string"},
                }
            },
        },
        **documented_problems(401, 403, 413, 422, 429, 502, 503, 504),
    },
)
async def create_capture_session(request: Request) -> Response:
    """A session whose end user is the verified user, and a token; 201 with its Location."""
    services = services_of(request)
    capture = _capture(services)
    try:
        user = await services.authenticator.authenticate(request)
        ttl, ws_connection_id, metadata = creation_request(
            await read_body(request, MAX_BODY_BYTES), services.settings
        )
        await capture.create_limiter.check(user.user_id)
        await services.limiter.check(user.user_id)  # the token inside counts as one, too
        created = await capture.sessions.create(user.user_id, ttl, ws_connection_id, metadata)
    except BrokerError as exc:
        metrics.CAPTURE_SESSIONS.labels(exc.code).inc()
        raise
    metrics.CAPTURE_SESSIONS.labels("created").inc()
    session, minted = created.session, created.issued.minted
    audit_log.info(
        "capture_session_created",
        session_id=session.session_id,
        user_id=user.user_id,
        provider=user.provider,
        token=fingerprint(minted.token),
        token_source=created.issued.source,
    )
    body = {
        "session_id": session.session_id,
        "status": session.status,
        "collection_id": session.collection_id or services.settings.capture_collection_id,
        "token": minted.token,
        "expires_at": minted.expires_at,
        "expires_in": max(0, minted.expires_at - int(time.time())),
    }
    headers = {**NO_STORE, "Location": f"{SESSIONS_PATH}/{session.session_id}"}
    return Response(json_body(body), 201, headers=headers, media_type="application/json")


@router.get(
    SESSIONS_PATH + "/{session_id}",
    response_model=CaptureSessionView,
    summary="Follow a capture session of the authenticated user",
    responses=documented_problems(
        401,
        404,
        422,
        429,
        502,
        503,
        504,
        s404="(no such session of this user)",
        s422="(not a session id)",
    ),
)
async def read_capture_session(request: Request, session_id: str) -> Response:
    """The owner's view of one session; another user's and an unknown one are one 404."""
    services = services_of(request)
    capture = _capture(services)
    user = await services.authenticator.authenticate(request)
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidRequest("session_id must be 1-128 characters of A-Z a-z 0-9 _ -")
    await capture.read_limiter.check(user.user_id)  # never the token limit: reading spends no token
    view = await capture.sessions.read(user.user_id, session_id)
    return Response(json_body(view), media_type="application/json", headers=NO_STORE)
