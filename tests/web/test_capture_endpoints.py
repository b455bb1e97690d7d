"""Capture sessions through the app: what a client may send, what VideoDB is asked, what comes
back, and every way VideoDB can fail, with the session calls served by the fake VideoDB."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import respx

from app.sandbox.dev_issuer import DevIssuer
from app.sandbox.stand_in_videodb import StandInVideoDB
from tests.conftest import API_KEY, AUDIENCE, VIDEODB, Build, bearer

SESSIONS = "/v1/capture/sessions"
CALLBACK = "https://partner.example.com/hooks/3f9a"


def _refused(metrics: httpx.Response, code: str) -> float:
    """broker_capture_sessions_total for this outcome (the counters live as long as the process)."""
    label = f'broker_capture_sessions_total{{outcome="{code}"}} '
    lines = [line for line in metrics.text.splitlines() if line.startswith(label)]
    return float(lines[0].split()[-1]) if lines else 0.0


def _via(fake: StandInVideoDB) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    """Hand a request respx caught to the fake VideoDB, over ASGI."""

    async def handler(request: httpx.Request) -> httpx.Response:
        answer = await httpx.ASGITransport(app=fake).handle_async_request(request)
        content = await answer.aread()
        return httpx.Response(answer.status_code, headers=answer.headers, content=content)

    return handler


def _first_failing(
    error: Exception, fake: StandInVideoDB
) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    """Fail the first call with `error`, then let the fake answer."""
    answer = _via(fake)
    failed: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if not failed:
            failed.append(request)
            raise error
        return await answer(request)

    return handler


@pytest.fixture
def fake(network: respx.MockRouter) -> StandInVideoDB:
    """VideoDB's capture-session calls, served by the fake (the token call stays respx's)."""
    videodb = StandInVideoDB(api_key=API_KEY)
    network.route(host="videodb.test", path__startswith="/collection/", name="sessions").mock(
        side_effect=_via(videodb)
    )
    return videodb


@pytest.fixture
def capture_client(
    app_client: Build, make_settings: Callable[..., Any]
) -> Callable[..., Awaitable[httpx.AsyncClient]]:
    async def build(**overrides: Any) -> httpx.AsyncClient:
        settings = {
            "capture_sessions": "on",
            "capture_callback_url": CALLBACK,
            "capture_collection_id": "col-partner",
            **overrides,
        }
        client: httpx.AsyncClient = await app_client(make_settings(**settings))
        return client

    return build


async def test_a_session_for_the_verified_user_with_a_token_in_one_round_trip(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    network: respx.MockRouter,
    fake: StandInVideoDB,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await capture_client()
    resp = await client.post(
        SESSIONS,
        json={"metadata": {"app": "desk", "n": 1}, "ws_connection_id": "ws.1:a", "expires_in": 600},
        headers=bearer(issuer.mint("ada", AUDIENCE)),
    )
    assert resp.status_code == 201
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert set(body) == {
        "session_id",
        "status",
        "collection_id",
        "token",
        "expires_at",
        "expires_in",
    }
    assert body["session_id"].startswith("cap-")
    assert resp.headers["location"] == f"{SESSIONS}/{body['session_id']}"
    assert (body["status"], body["collection_id"]) == ("created", "col-partner")
    assert body["token"].startswith("st-")
    assert 595 <= body["expires_in"] <= 600
    # what VideoDB was asked: the token first, then the session, with the server's choices
    assert json.loads(network["videodb"].calls.last.request.content)["user_id"] == "ada"
    ((method, path, sent),) = fake.session_calls
    assert (method, path) == ("POST", "/collection/col-partner/capture/session")
    assert sent == {
        "end_user_id": "ada",
        "callback_url": CALLBACK,
        "ws_connection_id": "ws.1:a",
        "metadata": {"app": "desk", "n": 1},
    }
    assert network["sessions"].calls.last.request.headers["x-access-token"] == API_KEY
    assert API_KEY not in resp.text
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (audit,) = [r for r in lines if r.get("event") == "capture_session_created"]
    assert audit["session_id"] == body["session_id"]
    assert audit["user_id"] == "ada"
    assert audit["token"].startswith("sha256:")
    assert body["token"] not in json.dumps(lines)
    metrics = await client.get("/metrics")
    assert _refused(metrics, "created") >= 1
    assert 'operation="create_capture_session",outcome="ok"' in metrics.text


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        ({"end_user_id": "mallory"}, "the end user"),
        ({"callback_url": "https://evil.example/hook"}, "callback"),
        ({"collection_id": "other"}, "collection"),
        ({"metadata": "not an object"}, "metadata"),
        ('{"metadata": {"x": NaN}}', "plain JSON"),
        ({"metadata": {"blob": "x" * 2100}}, "2048"),
        ({"ws_connection_id": ""}, "ws_connection_id"),
        ({"ws_connection_id": "a/b"}, "ws_connection_id"),
        ({"ws_connection_id": "x" * 129}, "ws_connection_id"),
        ({"ws_connection_id": 7}, "ws_connection_id"),
        ({"expires_in": 5}, "expires_in"),
        ([], "JSON object"),
    ],
)
async def test_what_a_client_may_not_send_is_a_422_before_videodb_is_called(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    network: respx.MockRouter,
    fake: StandInVideoDB,
    sent: Any,
    words: str,
) -> None:
    client = await capture_client()
    headers = bearer(issuer.mint("ada", AUDIENCE))
    if isinstance(sent, str):  # raw text: JSON no encoder would write
        resp = await client.post(SESSIONS, content=sent, headers=headers)
    else:
        resp = await client.post(SESSIONS, json=sent, headers=headers)
    assert resp.status_code == 422
    assert resp.json()["code"] == "invalid_request"
    assert words in resp.json()["detail"]
    assert "mallory" not in resp.text
    assert not network["videodb"].called
    assert fake.session_calls == []


async def test_no_credentials_no_session(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]], fake: StandInVideoDB
) -> None:
    client = await capture_client()
    for path in (SESSIONS, SESSIONS + "/cap-123"):
        resp = await (client.post(path) if path == SESSIONS else client.get(path))
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert fake.session_calls == []


async def test_a_failed_token_leaves_no_orphan_session(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    network: respx.MockRouter,
    fake: StandInVideoDB,
) -> None:
    network["videodb"].mock(return_value=httpx.Response(503))
    client = await capture_client()
    resp = await client.post(SESSIONS, headers=bearer(issuer.mint("ada", AUDIENCE)))
    assert resp.status_code == 503
    assert fake.session_calls == []


@pytest.mark.parametrize(
    ("fault", "status", "code", "calls"),
    [
        ("401", 502, "upstream_error", 1),
        ("404", 502, "upstream_error", 1),
        ("500", 503, "upstream_unavailable", 1),  # may have been created: never repeated
        ("503", 503, "upstream_unavailable", 1),
        ("hang", 504, "upstream_timeout", 1),
        ("malformed", 502, "upstream_error", 1),
        ("no_id", 502, "upstream_error", 1),
        ("path_in_id", 502, "upstream_error", 1),
    ],
)
async def test_every_failure_of_videodb_maps_to_the_contract_and_is_never_repeated(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
    fault: str,
    status: int,
    code: str,
    calls: int,
) -> None:
    fake.session_fault = fault
    client = await capture_client(upstream_timeout=0.5, circuit_failure_threshold=100)
    before = _refused(await client.get("/metrics"), code)
    resp = await client.post(SESSIONS, headers=bearer(issuer.mint("ada", AUDIENCE)))
    assert resp.status_code == status
    assert resp.json()["code"] == code
    assert resp.headers["content-type"] == "application/problem+json"
    assert len(fake.session_calls) == calls
    assert API_KEY not in resp.text
    assert "capture failed" not in resp.text  # VideoDB's own text never passed on
    assert _refused(await client.get("/metrics"), code) == before + 1


async def test_a_session_id_named_id_is_understood(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    fake.session_fault = "id_named_id"
    client = await capture_client()
    resp = await client.post(SESSIONS, headers=bearer(issuer.mint("ada", AUDIENCE)))
    assert resp.status_code == 201
    assert resp.json()["session_id"].startswith("cap-")


async def test_a_connection_refused_before_sending_is_retried_a_failure_after_is_not(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    network: respx.MockRouter,
    fake: StandInVideoDB,
) -> None:
    session_route = network["sessions"]
    session_route.side_effect = _first_failing(httpx.ConnectError("refused"), fake)
    client = await capture_client()
    ok = await client.post(SESSIONS, headers=bearer(issuer.mint("ada", AUDIENCE)))
    assert ok.status_code == 201
    assert session_route.call_count == 2  # never sent the first time: safe to send again
    session_route.side_effect = _first_failing(httpx.ReadError("reset after sending"), fake)
    failed = await client.post(SESSIONS, headers=bearer(issuer.mint("bob", AUDIENCE)))
    assert failed.status_code == 503
    assert session_route.call_count == 3  # it may have been created: not sent again


async def test_the_owner_follows_a_session_and_nobody_else_sees_it(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    client = await capture_client()
    ada = bearer(issuer.mint("ada", AUDIENCE))
    created = await client.post(SESSIONS, json={"metadata": {"k": "v"}}, headers=ada)
    location = created.headers["location"]
    mine = await client.get(location, headers=ada)
    assert mine.status_code == 200
    assert mine.headers["cache-control"] == "no-store"
    view = mine.json()
    assert view["session_id"] == created.json()["session_id"]
    assert view["metadata"] == {"k": "v"}
    assert view["channels"] == [{"channel_id": "mic", "type": "audio"}]
    for hidden in ("callback_url", "end_user_id", "rtstreams", "rts-", CALLBACK):
        assert hidden not in mine.text
    theirs = await client.get(location, headers=bearer(issuer.mint("mallory", AUDIENCE)))
    unknown = await client.get(SESSIONS + "/cap-nothing-here", headers=ada)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["code"] == unknown.json()["code"] == "not_found"
    assert theirs.json()["detail"] == unknown.json()["detail"]


@pytest.mark.parametrize("session_id", ["..%2F..%2Fcapture", "a.b", "x" * 129, "cap%00"])
async def test_a_session_id_that_is_not_one_never_reaches_videodb(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
    session_id: str,
) -> None:
    client = await capture_client()
    resp = await client.get(f"{SESSIONS}/{session_id}", headers=bearer(issuer.mint("a", AUDIENCE)))
    assert resp.status_code in (404, 422)  # 404: the path itself matched no route
    assert fake.session_calls == []


async def test_reading_while_videodb_fails_is_a_503(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    client = await capture_client()
    ada = bearer(issuer.mint("ada", AUDIENCE))
    location = (await client.post(SESSIONS, headers=ada)).headers["location"]
    fake.session_fault = "503"
    resp = await client.get(location, headers=ada)
    assert resp.status_code == 503
    assert resp.json()["code"] == "upstream_unavailable"


async def test_creating_sessions_has_its_own_per_user_limit(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    client = await capture_client(capture_rate_limit="2/minute")
    ada, bob = bearer(issuer.mint("ada", AUDIENCE)), bearer(issuer.mint("bob", AUDIENCE))
    statuses = [(await client.post(SESSIONS, headers=ada)).status_code for _ in range(3)]
    assert statuses == [201, 201, 429]
    assert (await client.post(SESSIONS, headers=bob)).status_code == 201
    assert (await client.post("/v1/capture/session/token", headers=ada)).status_code == 200
    assert len(fake.session_calls) == 3


async def test_off_the_paths_are_404_and_undocumented(
    app_client: Build, issuer: DevIssuer, network: respx.MockRouter
) -> None:
    client = await app_client()
    ada = bearer(issuer.mint("ada", AUDIENCE))
    for resp in (
        await client.post(SESSIONS, headers=ada),
        await client.get(SESSIONS + "/cap-1", headers=ada),
    ):
        assert resp.status_code == 404
        assert resp.json()["code"] == "not_found"
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not any(p.startswith(SESSIONS) for p in paths)


async def test_on_the_openapi_document_describes_both_calls(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]], fake: StandInVideoDB
) -> None:
    client = await capture_client()
    paths = (await client.get("/openapi.json")).json()["paths"]
    create = paths[SESSIONS]["post"]
    assert "Location" in create["responses"]["201"]["headers"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"metadata", "ws_connection_id", "expires_in"}
    assert schema["additionalProperties"] is False
    read = paths[SESSIONS + "/{session_id}"]["get"]
    assert {"200", "404", "422"} <= set(read["responses"])


def test_the_base_url_is_the_contracts() -> None:
    assert VIDEODB == "https://videodb.test"


def _nested(depth: int) -> dict[str, Any]:
    """An object `depth` deep: the object itself and depth - 1 arrays inside it."""
    inner: Any = []
    for _ in range(depth - 2):
        inner = [inner]
    return {"a": inner}


@pytest.mark.parametrize(
    "metadata",
    [{"n": 10**30}, {"n": -(10**30), "f": 1e308}, _nested(64)],
    ids=["integer_past_64_bits", "negative_and_huge_float", "nested_64_deep"],
)
async def test_what_a_session_was_created_with_reads_back(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
    metadata: dict[str, Any],
) -> None:
    client = await capture_client()
    ada = bearer(issuer.mint("ada", AUDIENCE))
    created = await client.post(SESSIONS, json={"metadata": metadata}, headers=ada)
    assert created.status_code == 201
    read = await client.get(created.headers["location"], headers=ada)
    assert read.status_code == 200
    assert read.json()["metadata"] == metadata
    assert read.headers["content-type"] == "application/json"


async def test_metadata_nested_past_64_is_refused_at_creation(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    client = await capture_client()
    ada = bearer(issuer.mint("ada", AUDIENCE))
    # 256: past orjson's limit; 500: halfway to the parser's (about 1,000 less the stack, which
    # a test run with coverage deepens: 900 was refused by the parser itself there)
    for depth in (65, 256, 500):
        arrays = "[" * (depth - 1) + "]" * (depth - 1)
        body = '{"metadata": {"a": ' + arrays + "}}"  # under the 2,048-byte limit
        resp = await client.post(SESSIONS, content=body, headers=ada)
        assert resp.status_code == 422, depth
        assert "at most 64 deep" in resp.json()["detail"]
    assert fake.session_calls == []


async def test_odd_values_videodb_stored_read_back_and_never_make_a_500(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    client = await capture_client()
    ada = bearer(issuer.mint("ada", AUDIENCE))
    location = (await client.post(SESSIONS, headers=ada)).headers["location"]
    fake.session_overrides.update(
        created_at=10**30,
        status="\ud800",
        export_status="half \udfff pair",
        metadata={"\ud83d": ["ok", "\ud83d\ude00"], "inf": float("inf")},
    )
    resp = await client.get(location, headers=ada)
    assert resp.status_code == 200
    view = json.loads(resp.content.decode("utf-8"))  # strict UTF-8: no surrogate in it
    assert view["created_at"] == 10**30
    assert view["status"] == "\ufffd"
    assert view["export_status"] == "half \ufffd pair"
    assert view["metadata"] == {"\ufffd": ["ok", "\U0001f600"], "inf": None}


async def test_an_odd_collection_in_videodbs_creation_answer_still_gives_the_session(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    fake.session_overrides.update(collection_id="\ud800", status="\udfff")
    client = await capture_client()
    resp = await client.post(SESSIONS, headers=bearer(issuer.mint("ada", AUDIENCE)))
    assert resp.status_code == 201  # the session exists: its creation is not an error
    body = json.loads(resp.content.decode("utf-8"))
    assert (body["collection_id"], body["status"]) == ("col-partner", "created")
    assert body["session_id"] in fake.sessions


def _upstream(metrics: httpx.Response, operation: str, outcome: str) -> float:
    """broker_upstream_requests_total for this operation and outcome."""
    label = f'broker_upstream_requests_total{{operation="{operation}",outcome="{outcome}"}} '
    lines = [line for line in metrics.text.splitlines() if line.startswith(label)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def test_a_refusal_of_what_a_user_asked_is_counted_apart_from_a_refused_key(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    network: respx.MockRouter,
    fake: StandInVideoDB,
) -> None:
    """The key alert pages on outcome="key_refused" of the token call alone
    (deploy/prometheus/alerts.yaml): no user can make it fire with requests of theirs."""
    client = await capture_client(circuit_failure_threshold=100)
    ada = bearer(issuer.mint("ada", AUDIENCE))
    series = [
        (operation, outcome)
        for operation in ("token", "create_capture_session")
        for outcome in ("refused", "key_refused", "error")
    ]
    before = {s: _upstream(await client.get("/metrics"), *s) for s in series}

    fake.session_fault = "400"  # VideoDB refuses what this user asked for
    for _ in range(3):
        resp = await client.post(SESSIONS, json={"metadata": {"odd": 1}}, headers=ada)
        assert resp.status_code == 502
        assert resp.json()["code"] == "upstream_error"
    after = {s: _upstream(await client.get("/metrics"), *s) for s in series}
    changed = {s: after[s] - before[s] for s in series if after[s] != before[s]}
    assert changed == {("create_capture_session", "refused"): 3}

    fake.session_fault = "403"  # the key may not use this collection: not the key revoked
    assert (await client.post(SESSIONS, headers=ada)).status_code == 502
    network["videodb"].mock(return_value=httpx.Response(401, json={"success": False}))
    bob = bearer(issuer.mint("bob", AUDIENCE))  # a token call VideoDB refuses: the key is bad
    assert (await client.post("/v1/capture/session/token", headers=bob)).status_code == 502
    last = {s: _upstream(await client.get("/metrics"), *s) for s in series}
    changed = {s: last[s] - after[s] for s in series if last[s] != after[s]}
    assert changed == {("create_capture_session", "key_refused"): 1, ("token", "key_refused"): 1}


async def test_reading_ones_sessions_has_its_own_limit_and_never_spends_the_tokens(
    capture_client: Callable[..., Awaitable[httpx.AsyncClient]],
    issuer: DevIssuer,
    fake: StandInVideoDB,
) -> None:
    client = await capture_client(rate_limit="3/minute", capture_read_rate_limit="5/minute")
    ada, bob = bearer(issuer.mint("ada", AUDIENCE)), bearer(issuer.mint("bob", AUDIENCE))
    location = (await client.post(SESSIONS, headers=ada)).headers["location"]  # a token: 1 of 3
    reads = [await client.get(location, headers=ada) for _ in range(6)]
    assert [r.status_code for r in reads] == [200] * 5 + [429]
    refused = reads[-1]
    assert refused.json()["code"] == "rate_limited"
    assert "capture session reads" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # the token limit is as the creation left it: two refreshes left, then the third is over
    tokens = [await client.post("/v1/capture/session/token", headers=ada) for _ in range(3)]
    assert [r.status_code for r in tokens] == [200, 200, 429]
    assert "token requests" in tokens[-1].json()["detail"]
    # per user: another user's reads are their own
    assert (await client.get(location, headers=bob)).status_code == 404
    assert len([c for c in fake.session_calls if c[0] == "GET"]) == 6
