"""Create a capture session for a verified user (the token first, so that a failed token
leaves no orphan session), and read one back for its owner only, filtered to what the
contract lets a client see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from app.errors import NotFound, UpstreamUnusable
from app.observability import tracing
from app.tokens.service import IssuedToken, TokenService
from app.videodb.answers import SESSION_ID, CaptureSession


class SessionStore(Protocol):
    """Where capture sessions are made and read: VideoDB, through its resilient client."""

    async def create_capture_session(self, payload: dict[str, object]) -> CaptureSession: ...

    async def get_capture_session(self, session_id: str) -> dict[str, object]: ...

    async def export_session(self, session_id: str) -> dict[str, object]: ...


# What a client may see of an export, besides its status
EXPORT_FIELDS = ("video_id", "stream_url", "player_url")
# What a client may see of VideoDB's record (never callback_url, end_user_id or rtstreams).
PUBLIC_FIELDS = (
    "session_id",
    "status",
    "collection_id",
    "metadata",
    "created_at",
    "export_status",
    "exported_video_id",
    "primary_video_channel_id",
    "channels",
)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session just created, and the token it is to be used with."""

    session: CaptureSession
    issued: IssuedToken


def _public_channel(channel: object) -> object:
    if not isinstance(channel, dict):
        return channel
    # a channel may name its RTStream: an id of the partner's account, not the user's business
    return {k: v for k, v in channel.items() if "rtstream" not in k.lower()}


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """The contract's fields of a session record, where present."""
    view = {name: record[name] for name in PUBLIC_FIELDS if name in record}
    if "session_id" not in view and isinstance(record.get("id"), str):
        view = {"session_id": record["id"], **view}  # some versions name it `id`
    if isinstance(view.get("channels"), list):
        view["channels"] = [_public_channel(c) for c in view["channels"]]
    return view


class CaptureSessions:
    """Capture sessions at VideoDB, in the server's collection, for one user at a time."""

    def __init__(
        self, videodb: SessionStore, tokens: TokenService, callback_url: str | None
    ) -> None:
        self._videodb = videodb
        self._tokens = tokens
        self._callback_url = callback_url

    async def create(
        self,
        user_id: str,
        ttl: int,
        ws_connection_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> NewSession:
        """A session whose end user is `user_id` (never anything a client sent), and a token."""
        with tracing.span("broker.capture_session create"):
            return await self._create(user_id, ttl, ws_connection_id, metadata)

    async def _create(
        self,
        user_id: str,
        ttl: int,
        ws_connection_id: str | None,
        metadata: dict[str, Any] | None,
    ) -> NewSession:
        issued = await self._tokens.issue(user_id, ttl)
        payload: dict[str, object] = {"end_user_id": user_id}
        if self._callback_url is not None:
            payload["callback_url"] = self._callback_url
        if ws_connection_id is not None:
            payload["ws_connection_id"] = ws_connection_id
        if metadata is not None:
            payload["metadata"] = metadata
        session = await self._videodb.create_capture_session(payload)
        return NewSession(session, issued)

    async def read(self, user_id: str, session_id: str) -> dict[str, Any]:
        """The owner's view of a session; another user's and an unknown one are one NotFound."""
        if not SESSION_ID.fullmatch(session_id):
            raise NotFound("No such capture session.")  # the endpoint refuses it first (422)
        with tracing.span("broker.capture_session read"):
            record = await self._videodb.get_capture_session(session_id)
        if record.get("end_user_id") != user_id:
            raise NotFound("No such capture session.")
        return public_view(record)

    async def export(self, user_id: str, session_id: str) -> dict[str, Any]:
        """Export the owner's session (or poll the export); another user's is NotFound, and
        nothing is asked of VideoDB's export for it."""
        await self.read(user_id, session_id)
        with tracing.span("broker.capture_session export"):
            answer = await self._videodb.export_session(session_id)
        status = answer.get("export_status")
        if not isinstance(status, str) or not status.isprintable() or len(status) > 64:
            raise UpstreamUnusable("VideoDB answered without an export status.")
        view: dict[str, Any] = {"session_id": session_id, "export_status": status}
        for name in EXPORT_FIELDS:
            value = answer.get(name)
            if isinstance(value, str) and value.isprintable() and len(value) <= 2048:
                view[name] = value
        return view
