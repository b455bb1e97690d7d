"""The example clients against a running broker: a real Chromium across origins, and the
desktop program."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from app.sandbox.stand_in_videodb import StandInVideoDB as FakeVideoDB
from harness.broker_process import REPO, BrokerProcess, clean_env, free_port
from harness.servers import ThreadedServer
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.fakes.redis_server import require_binary
from tests.fakes.videodb_live import FakeLiveVideoDB, live_plane
from tests.integration.conftest import API_KEY, AUDIENCE, broker_settings
from tests.integration.js_package import built_package, node

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _static_site() -> Starlette:
    """examples/browser as a web server serves it, with the package where `npm install` links
    it (node_modules/videodb-token-broker-client -> clients/js); a missing file is a 404."""
    package = built_package() / "dist"
    return Starlette(
        routes=[
            Mount(
                "/node_modules/videodb-token-broker-client/dist",
                StaticFiles(directory=package),
            ),
            Mount("/", StaticFiles(directory=REPO / "examples" / "browser")),
        ]
    )


@pytest.fixture(scope="module")
def page_server() -> Iterator[ThreadedServer]:
    """examples/browser served from its own origin, as a partner's app would be."""
    server = ThreadedServer(_static_site()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def short_lived_broker(
    idp: FakeIdentityProvider,
    videodb_server: tuple[FakeVideoDB, ThreadedServer],
    page_server: ThreadedServer,
) -> Iterator[BrokerProcess]:
    """A broker allowing the page's origin, with lifetimes short enough to see refreshes."""
    _, server = videodb_server
    settings = broker_settings(
        idp,
        server.url,
        BROKER_CORS_ORIGINS=page_server.url,
        BROKER_TOKEN_MIN_TTL="2",
        BROKER_TOKEN_DEFAULT_TTL="4",
        BROKER_TOKEN_MAX_TTL="60",
        BROKER_CAPTURE_SESSIONS="on",
    )
    process = BrokerProcess(settings).wait_ready()
    yield process
    process.terminate()


class RestartableBroker:
    """A broker that can go away and come back on the same address, as in a rolling update."""

    def __init__(self, settings: dict[str, str]) -> None:
        self._settings = settings
        self.process = BrokerProcess(settings).wait_ready()
        self.url = self.process.url

    def stop(self) -> None:
        self.process.terminate()

    def start(self) -> None:
        self.process = BrokerProcess(self._settings, port=self.process.port).wait_ready()


@pytest.fixture
def restartable_broker(
    idp: FakeIdentityProvider,
    videodb_server: tuple[FakeVideoDB, ThreadedServer],
    page_server: ThreadedServer,
) -> Iterator[RestartableBroker]:
    _, server = videodb_server
    broker = RestartableBroker(
        broker_settings(
            idp,
            server.url,
            BROKER_CORS_ORIGINS=page_server.url,
            BROKER_TOKEN_MIN_TTL="2",
            BROKER_TOKEN_DEFAULT_TTL="6",
            BROKER_TOKEN_MAX_TTL="60",
        )
    )
    yield broker
    broker.stop()


def _page_text(
    page_url: str, wait_for: str, then_js: str | None = None, timeout_ms: int = 20_000
) -> dict[str, str]:
    from playwright.sync_api import sync_playwright

    executable = require_binary("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_url)
            page.wait_for_function(wait_for, timeout=timeout_ms)
            shown = {"js": str(page.evaluate(then_js))} if then_js else {}
            return shown | {
                name: page.inner_text(f"#{name}")
                for name in ("status", "token", "expires", "refreshes", "error")
            }
        finally:
            browser.close()


def test_browser_page_gets_and_refreshes_a_token_across_origins(
    short_lived_broker: BrokerProcess,
    page_server: ThreadedServer,
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
) -> None:
    query = urlencode(
        {
            "broker": short_lived_broker.url,
            "id_token": idp.issuers[0].mint("browser-user", AUDIENCE),
            "expires_in": "4",
            "margin": "3",
        }
    )
    # After two scheduled refreshes: VideoDB says 401 three times at once; the package makes
    # one request for all of them. Then the user signs out while a refresh is on its way:
    # its answer is dropped and nothing more is fetched.
    shown = _page_text(
        f"{page_server.url}/index.html?{query}",
        "Number(document.getElementById('refreshes').textContent) >= 2",
        then_js="""async () => {
            const t = window.tokens;
            t.stop();
            const before = t.fetches;
            await Promise.all([t.invalidate(), t.invalidate(), t.getToken()]);
            const shared = t.fetches - before;
            const pending = t.invalidate();
            t.stop();
            const late = await pending.then(() => "kept", (e) => "dropped " + e.name);
            const after = t.fetches;
            await new Promise((resolve) => setTimeout(resolve, 3000));  // past a refresh due
            return [shared, late, t.current === null, t.fetches === after].join(" ");
        }""",
    )
    assert shown["js"] == "1 dropped AbortError true true"
    assert shown["status"] == "ready"
    assert shown["token"].startswith("st-")
    assert shown["error"] == "none"
    records = short_lived_broker.log_records()
    preflights = [r for r in records if r.get("event") == "request" and r["method"] == "OPTIONS"]
    assert preflights
    assert all(r["status"] == 200 for r in preflights)
    issued = [
        r
        for r in records
        if r.get("event") == "token_issued" and r.get("user_id") == "browser-user"
    ]
    assert len(issued) >= 2
    assert videodb.calls  # a real exchange happened behind it


def test_browser_page_creates_a_capture_session_across_origins(
    short_lived_broker: BrokerProcess,
    page_server: ThreadedServer,
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
) -> None:
    """The package's createCaptureSession in real Chromium: the session's id from the broker,
    created for the verified user with the page's metadata, and its token becomes the one
    the token source holds and refreshes."""
    query = urlencode(
        {
            "broker": short_lived_broker.url,
            "id_token": idp.issuers[0].mint("web-recorder", AUDIENCE),
            "expires_in": "30",
        }
    )
    shown = _page_text(
        f"{page_server.url}/index.html?{query}",
        "document.getElementById('status').textContent === 'ready'",
        then_js="""async () => {
            const t = window.tokens;
            const options = {metadata: {app: "web"}, wsConnectionId: "ws-1"};
            const s = await window.broker.createCaptureSession(t, options);
            return [s.sessionId, s.status, t.current.token === s.token].join(" ");
        }""",
    )
    session_id, status, held = shown["js"].split(" ")
    assert session_id.startswith("cap-")
    assert (status, held) == ("created", "true")
    sent = [body for method, _, body in videodb.session_calls if method == "POST"]
    assert sent[-1]["end_user_id"] == "web-recorder"
    assert sent[-1]["metadata"] == {"app": "web"}


def test_browser_page_reads_back_and_follows_its_session_across_origins(
    short_lived_broker: BrokerProcess,
    page_server: ThreadedServer,
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
) -> None:
    """The user clicks "Create a capture session": the page creates it, reads it back with a
    GET and follows its feed, each through a real CORS preflight (GET with the bearer; the
    feed resumed with Last-Event-ID). Live capture is off on this broker, so the feed is a
    not_found the page can read (a preflight refused would be a network error instead)."""
    from playwright.sync_api import sync_playwright

    query = urlencode(
        {
            "broker": short_lived_broker.url,
            "id_token": idp.issuers[0].mint("web-follower", AUDIENCE),
            "expires_in": "30",
        }
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=require_binary("chromium"), args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(f"{page_server.url}/index.html?{query}")
            page.wait_for_function("document.getElementById('status').textContent === 'ready'")
            page.click("#create")
            page.wait_for_function(
                "!['-', 'following'].includes(document.getElementById('feed').textContent)"
            )
            session_id = page.inner_text("#session")
            status, feed = page.inner_text("#session-status"), page.inner_text("#feed")
            resumed = page.evaluate(
                """async (id) => {
                    const feed = window.broker.followCaptureSession(
                        window.tokens, id, {lastEventId: "7"});
                    return feed.next().then(() => "event", (e) => e.name + " " + e.code);
                }""",
                session_id,
            )
        finally:
            browser.close()
    assert session_id.startswith("cap-")
    assert status == "created"  # read back with GET
    assert feed.startswith("not_found:")
    assert resumed == "BrokerError not_found"
    records = short_lived_broker.log_records()
    reads = [r for r in records if r.get("event") == "request" and session_id in r.get("path", "")]
    assert {
        (r["method"], r["path"].removeprefix(f"/v1/capture/sessions/{session_id}"), r["status"])
        for r in reads
    } == {
        ("OPTIONS", "", 200),
        ("GET", "", 200),
        ("OPTIONS", "/events", 200),
        ("GET", "/events", 404),
    }
    preflights = [r for r in reads if r["method"] == "OPTIONS"]
    assert len(preflights) >= 2


@pytest.fixture(scope="module")
def plane() -> Iterator[tuple[FakeLiveVideoDB, ThreadedServer]]:
    """VideoDB's stand-in with its live plane: a real WebSocket, webhooks, export."""
    with live_plane(FakeVideoDB(api_key=API_KEY)) as live:
        server = ThreadedServer(live).start()
        yield live, server
        server.stop()


@pytest.fixture
def live_broker(
    idp: FakeIdentityProvider,
    plane: tuple[FakeLiveVideoDB, ThreadedServer],
    page_server: ThreadedServer,
) -> Iterator[BrokerProcess]:
    """A broker with live capture on: VideoDB's webhooks come to it, feeds go to the page."""
    _, server = plane
    port = free_port()
    settings = broker_settings(
        idp,
        server.url,
        BROKER_CORS_ORIGINS=page_server.url,
        BROKER_CAPTURE_SESSIONS="on",
        BROKER_CAPTURE_LIVE="on",
        BROKER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        BROKER_CAPTURE_WEBHOOK_SECRET="a-webhook-secret-for-the-client-tests-only",
        BROKER_CAPTURE_PIPELINES=json.dumps([{"channel": "mic", "run": "transcript"}]),
    )
    process = BrokerProcess(settings, port=port).wait_ready()
    yield process
    process.terminate()


def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        time.sleep(0.05)


def test_browser_page_follows_its_session_live_to_the_end_across_origins(
    live_broker: BrokerProcess,
    page_server: ThreadedServer,
    idp: FakeIdentityProvider,
    plane: tuple[FakeLiveVideoDB, ThreadedServer],
) -> None:
    """End to end, as the issue has it: a page on another origin creates a session, reads it
    back with GET and follows its feed through the package. VideoDB then starts the session,
    its AI speaks on VideoDB's socket, and the recording is exported: the page lists each
    event as it comes, shows the last status, and the feed ends after it."""
    from playwright.sync_api import sync_playwright

    live, _ = plane
    query = urlencode(
        {"broker": live_broker.url, "id_token": idp.issuers[0].mint("web-live", AUDIENCE)}
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=require_binary("chromium"), args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(f"{page_server.url}/index.html?{query}")
            page.wait_for_function("document.getElementById('status').textContent === 'ready'")
            page.click("#create")
            page.wait_for_function("document.getElementById('feed').textContent !== '-'")
            session_id = page.inner_text("#session")
            read_back = page.inner_text("#session-status")
            assert page.inner_text("#feed") == "following"
            live.set_status(session_id, "active")
            assert live.webhook_now(session_id).status_code == 200
            _until(lambda: live.threaded_socket.open == 1)  # the broker's socket to VideoDB
            said = {"text": "hello from the mic", "is_final": True}
            live.threaded_socket.send(json.dumps({"channel": "transcript", "data": said}))
            live.threaded_socket.send(
                json.dumps({"channel": "scene_index", "data": {"text": "a slide"}})
            )
            page.wait_for_function("document.querySelectorAll('#events li').length === 2")
            live.set_status(session_id, "exported", exported_video_id="m-9")
            assert live.webhook_now(session_id, "capture_session.exported").status_code == 200
            page.wait_for_function("document.getElementById('feed').textContent === 'ended'")
            events = page.inner_text("#events").splitlines()
            status = page.inner_text("#session-status")
        finally:
            browser.close()
    assert session_id.startswith("cap-")
    assert read_back == "created"
    assert events == [
        "transcript: hello from the mic",
        "visual_index: a slide",
        "status: exported",
    ]
    assert status == "exported"
    feeds = [
        r
        for r in live_broker.log_records()
        if r.get("event") == "request" and r.get("path", "").endswith(f"{session_id}/events")
    ]
    assert {(r["method"], r["status"]) for r in feeds} == {("OPTIONS", 200), ("GET", 200)}


def test_browser_page_from_an_unlisted_origin_is_refused(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider
) -> None:
    other = ThreadedServer(_static_site()).start()
    try:
        query = urlencode(
            {
                "broker": short_lived_broker.url,
                "id_token": idp.issuers[0].mint("elsewhere", AUDIENCE),
            }
        )
        shown = _page_text(
            f"{other.url}/index.html?{query}",
            "document.getElementById('status').textContent === 'error'",
        )
    finally:
        other.stop()
    assert shown["token"] == "none"
    assert "BrokerUnreachableError" in shown["error"]  # the browser blocked it: CORS
    assert not any(
        r.get("event") == "token_issued" and r.get("user_id") == "elsewhere"
        for r in short_lived_broker.log_records()
    )


def test_browser_page_rides_out_a_broker_restart(
    restartable_broker: RestartableBroker,
    page_server: ThreadedServer,
    idp: FakeIdentityProvider,
) -> None:
    """The broker goes away: the page keeps the token it holds, and gets a new one by
    itself once the broker is back."""
    from playwright.sync_api import sync_playwright

    query = urlencode(
        {
            "broker": restartable_broker.url,
            "id_token": idp.issuers[0].mint("browser-restart", AUDIENCE),
            "expires_in": "10",
            "margin": "5",
        }
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=require_binary("chromium"), args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(f"{page_server.url}/index.html?{query}")
            page.wait_for_function("document.getElementById('refreshes').textContent === '1'")
            first = page.inner_text("#token")
            restartable_broker.stop()
            # The scheduled refresh (5 s before expiry) fails; asked for a token right then,
            # the package answers with the one it holds instead of an error.
            outcome = page.evaluate(
                """async () => {
                    const t = window.tokens;
                    const held = t.current.token;
                    const error = await new Promise((resolve) => {
                        addEventListener("broker-error", (e) => resolve(e.detail), {once: true});
                    });
                    const answer = await t.getToken();
                    return {error: error.name, same: answer === held, left: t.secondsLeft()};
                }"""
            )
            restartable_broker.start()
            page.wait_for_function(
                "document.getElementById('refreshes').textContent === '2'", timeout=20_000
            )
            status, second = page.inner_text("#status"), page.inner_text("#token")
        finally:
            browser.close()
    assert outcome["error"] == "BrokerUnreachableError"  # no answer: the broker was gone
    assert outcome["same"] is True
    assert outcome["left"] > 1
    assert status == "ready"
    assert second.startswith("st-")
    assert second != first


COOKIE = "session_jwt"


@pytest.fixture(scope="module")
def cookie_broker(
    idp: FakeIdentityProvider,
    videodb_server: tuple[FakeVideoDB, ThreadedServer],
    page_server: ThreadedServer,
) -> Iterator[BrokerProcess]:
    """A broker that also reads the JWT from a cookie (a partner's backend-for-frontend)."""
    _, server = videodb_server
    settings = broker_settings(
        idp, server.url, BROKER_CORS_ORIGINS=page_server.url, BROKER_AUTH_COOKIE_NAME=COOKIE
    )
    process = BrokerProcess(settings).wait_ready()
    yield process
    process.terminate()


def test_browser_page_uses_the_cookie_with_its_csrf_header(
    cookie_broker: BrokerProcess, page_server: ThreadedServer, idp: FakeIdentityProvider
) -> None:
    """The JWT rides in a cookie for the broker's site; no script on the page can read it.
    The package sends it with `X-CSRF: 1` through a credentialed CORS exchange; the same
    request without the header is refused, and the page can read why."""
    from playwright.sync_api import sync_playwright

    query = urlencode({"broker": cookie_broker.url, "cookie": "1"})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=require_binary("chromium"), args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context()
            context.add_cookies(
                [
                    {
                        "name": COOKIE,
                        "value": idp.issuers[0].mint("cookie-user", AUDIENCE),
                        "url": cookie_broker.url,
                        "httpOnly": True,
                        "sameSite": "Lax",
                    }
                ]
            )
            page = context.new_page()
            page.goto(f"{page_server.url}/index.html?{query}")
            page.wait_for_function("document.getElementById('status').textContent !== 'starting'")
            status, token = page.inner_text("#status"), page.inner_text("#token")
            error = page.inner_text("#error")
            without_header = page.evaluate(
                """async (url) => {
                    const r = await fetch(url + "/v1/capture/session/token", {
                        method: "POST", credentials: "include",
                        headers: {"Content-Type": "application/json"}, body: "{}",
                    });
                    return [r.status, (await r.json()).code, document.cookie].join(" ");
                }""",
                cookie_broker.url,
            )
        finally:
            browser.close()
    assert (status, error) == ("ready", "none")
    assert token.startswith("st-")
    assert without_header == "403 csrf_failed "  # and the cookie is out of the page's reach
    records = cookie_broker.log_records()
    issued = [r for r in records if r.get("event") == "token_issued"]
    assert [r["user_id"] for r in issued] == ["cookie-user"]
    preflights = [r for r in records if r.get("event") == "request" and r["method"] == "OPTIONS"]
    assert preflights
    assert all(r["status"] == 200 for r in preflights)


NODE_EXAMPLE = REPO / "examples" / "node"


def _node_example(
    *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, object]], str]:
    """examples/node/main.mjs with VideoDB's npm package as `npm ci` installed it: its exit
    code, its JSON lines, and everything it and the SDK printed."""
    if not (NODE_EXAMPLE / "node_modules" / "videodb").is_dir():
        message = "examples/node is not installed: npm ci --prefix examples/node"
        if os.environ.get("BROKER_TESTS_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    built_package()
    result = subprocess.run(
        [node(), str(NODE_EXAMPLE / "main.mjs"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean_env(), **(env or {})},
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, events, result.stdout + result.stderr


def test_node_example_starts_videodb_capture_client_and_keeps_its_token_fresh_without_the_recorder(
    short_lived_broker: BrokerProcess,
    idp: FakeIdentityProvider,
    videodb: FakeVideoDB,
    tmp_path: Path,
) -> None:
    """VideoDB's real npm package (videodb 0.2.0, `videodb/capture`), whose native recorder is
    downloaded at run time for macOS and Windows only: the program creates its session through
    the broker, hands the session and its token to CaptureClient, says in one line that the
    recorder cannot be had here, and goes on refreshing the token."""
    sdk = json.loads((NODE_EXAMPLE / "node_modules" / "videodb" / "package.json").read_text())
    assert (sdk["name"], sdk["version"]) == ("videodb", "0.2.0")  # the SDK, not a stand-in
    id_token = tmp_path / "id-token"
    id_token.write_text(idp.issuers[0].mint("node-recorder", AUDIENCE) + "\n")
    code, events, output = _node_example(
        *("--broker", short_lived_broker.url, "--session"),
        *("--expires-in", "4", "--margin", "3", "--run-for", "5"),
        env={"ID_TOKEN_FILE": str(id_token)},
    )
    assert code == 0, output
    names = [e["event"] for e in events]
    assert names[0] == "token_received"  # the session's own token, in the same round trip
    (created,) = [e for e in events if e["event"] == "capture_session_created"]
    assert str(created["session_id"]).startswith("cap-")
    (missing,) = [e for e in events if e["event"] == "videodb_recorder_missing"]
    assert "not supported" in str(missing["note"])  # VideoDB's own words: linux-x64
    assert names.count("token_received") >= 2  # kept fresh afterwards
    assert all(str(e["token"]).startswith("sha256:") for e in events if "token" in e)
    assert events[-1] == {"event": "stopped", "fetches": names.count("token_received")}
    ((method, _path, sent),) = videodb.session_calls
    assert (method, sent["end_user_id"], sent["metadata"]) == (
        "POST",
        "node-recorder",
        {"app": "node-example"},
    )
    assert "st-" not in output
    assert "Error:" not in output  # no stack trace, from the program or the SDK


def test_node_example_takes_no_token_on_the_command_line_and_reports_a_refusal(
    short_lived_broker: BrokerProcess, tmp_path: Path
) -> None:
    code, _, output = _node_example("--broker", short_lived_broker.url, "--id-token", "x.y.z")
    assert code == 2
    assert "ID_TOKEN_FILE" in output  # where to put it instead
    assert "x.y.z" not in output  # the refusal does not echo it
    code, _, output = _node_example("--broker", short_lived_broker.url)
    assert code == 2
    assert "ID_TOKEN_FILE" in output
    id_token = tmp_path / "id-token"
    id_token.write_text("not-a-jwt")
    code, events, _ = _node_example(
        "--broker", short_lived_broker.url, env={"ID_TOKEN_FILE": str(id_token)}
    )
    assert code == 1
    assert events[-2]["event"] == "broker_refused"
    assert events[-2]["code"] == "invalid_token"


def _desktop(
    *args: str, id_token: str | None = None, stdin: str | None = None
) -> tuple[int, list[dict[str, object]], str]:
    """examples/desktop/capture_app.py, the JWT (if any) in ID_TOKEN as a user would set it."""
    env = {name: value for name, value in clean_env().items() if name != "ID_TOKEN"}
    if id_token is not None:
        env["ID_TOKEN"] = id_token
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "desktop" / "capture_app.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        input=stdin,
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.returncode, events, result.stdout + result.stderr


def test_desktop_program_gets_and_refreshes_a_token(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider, videodb: FakeVideoDB
) -> None:
    bearer = idp.issuers[0].mint("desktop-user", AUDIENCE)
    code, events, output = _desktop(
        *("--broker", short_lived_broker.url, "--expires-in", "4", "--margin", "3"),
        *("--run-for", "5"),
        id_token=bearer,
    )
    assert code == 0, output
    received = [e for e in events if e["event"] == "token_received"]
    assert len(received) >= 2
    assert all(str(e["token"]).startswith("sha256:") for e in received)
    assert "st-" not in output  # only fingerprints
    assert events[-1] == {"event": "stopped", "fetches": len(received)}
    assert any(str(e["event"]).startswith("videodb_") for e in events)


def test_desktop_program_creates_a_session_and_keeps_its_token_fresh_without_the_runtime(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider, videodb: FakeVideoDB
) -> None:
    """With VideoDB's real SDK installed as a partner installs it (`pip install videodb`, no
    native capture runtime, which this Linux cannot install), the program creates its session
    through the broker, says in one line that capturing cannot start here, and goes on."""
    from importlib.metadata import version

    assert version("videodb").startswith("0.5.")  # the SDK itself, not a stand-in module
    bearer = idp.issuers[0].mint("recorder", AUDIENCE)
    code, events, output = _desktop(
        *("--broker", short_lived_broker.url, "--session", "--expires-in", "4"),
        *("--margin", "3", "--run-for", "5"),
        id_token=bearer,
    )
    assert code == 0, output
    names = [e["event"] for e in events]
    assert names[0] == "token_received"  # the session's own token, in the same round trip
    (created,) = [e for e in events if e["event"] == "capture_session_created"]
    assert str(created["session_id"]).startswith("cap-")
    (missing,) = [e for e in events if e["event"] == "videodb_capture_runtime_missing"]
    assert "Capture runtime not found" in str(missing["note"])
    assert "Traceback" not in output
    assert names.count("token_received") >= 2  # kept fresh afterwards
    ((method, _path, sent),) = videodb.session_calls
    assert (method, sent["end_user_id"]) == ("POST", "recorder")
    assert "st-" not in output


def test_desktop_program_starts_capturing_with_the_runtime(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider, videodb: FakeVideoDB
) -> None:
    from importlib.util import find_spec

    if find_spec("videodb_capture_bin") is None:
        pytest.skip(
            "videodb-capture-bin, VideoDB's native capture runtime, has no build for this "
            "Linux (pip install 'videodb[capture]' fails here); the test above covers its absence"
        )
    bearer = idp.issuers[0].mint("recorder", AUDIENCE)
    code, events, output = _desktop(
        "--broker", short_lived_broker.url, "--session", "--run-for", "5", id_token=bearer
    )
    assert code == 0, output
    assert "capture_started" in [e["event"] for e in events]


def test_desktop_program_reports_a_refusal(
    short_lived_broker: BrokerProcess,
) -> None:
    code, events, _ = _desktop("--broker", short_lived_broker.url, id_token="not-a-jwt")
    assert code == 1
    assert events[-1]["event"] == "broker_refused"
    assert events[-1]["code"] == "invalid_token"
    code, _, output = _desktop("--broker", short_lived_broker.url)
    assert code == 2
    assert "ID_TOKEN" in output


def test_desktop_program_keeps_trying_an_unreachable_broker_then_says_so(
    idp: FakeIdentityProvider,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    bearer = idp.issuers[0].mint("desktop-offline", AUDIENCE)
    code, events, _ = _desktop("--broker", nowhere, "--run-for", "3.5", id_token=bearer)
    assert code == 1  # stopped without ever getting a token
    failed = [e for e in events if e["event"] == "refresh_failed"]
    assert [e["retry_in"] for e in failed] == [2.0, 4.0]  # backing off, not hammering
    assert {e["reason"] for e in failed} == {"ConnectError"}
    assert events[-1] == {"event": "stopped", "fetches": 0}


def test_desktop_program_paces_refreshes_by_the_lifetime_granted(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider
) -> None:
    """No --expires-in: the broker's default (4 s here) decides, not the 300 s margin."""
    bearer = idp.issuers[0].mint("desktop-default-ttl", AUDIENCE)
    code, events, output = _desktop(
        "--broker", short_lived_broker.url, "--run-for", "5", id_token=bearer
    )
    assert code == 0, output
    received = [e for e in events if e["event"] == "token_received"]
    assert [e["expires_in"] for e in received[:1]] == [4]
    assert 2 <= len(received) <= 4, received  # one every ~2 s, not one per loop turn


def test_desktop_program_rides_out_a_broker_restart(
    restartable_broker: RestartableBroker, idp: FakeIdentityProvider
) -> None:
    bearer = idp.issuers[0].mint("desktop-restart", AUDIENCE)
    command = [
        sys.executable,
        str(REPO / "examples" / "desktop" / "capture_app.py"),
        *("--broker", restartable_broker.url),
        # bounds against a hang only: the test ends the app as soon as it has its second token
        *("--expires-in", "6", "--margin", "3", "--run-for", "180"),
    ]
    events: list[dict[str, object]] = []
    env = clean_env(ID_TOKEN=bearer)
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as app:
        watchdog = threading.Timer(180, app.kill)
        watchdog.start()
        try:
            assert app.stdout is not None
            for line in app.stdout:
                events.append(json.loads(line))
                kind = events[-1]["event"]
                received = [e for e in events if e["event"] == "token_received"]
                failures = [e for e in events if e["event"] == "refresh_failed"]
                if kind == "token_received" and len(received) == 1:
                    restartable_broker.stop()  # gone while the app holds a 6 s token
                elif kind == "refresh_failed" and len(failures) == 1:
                    restartable_broker.start()  # back on the same address
                elif kind == "token_received":
                    app.send_signal(signal.SIGINT)  # the user quits
            assert app.wait(timeout=10) == 0, events
        except BaseException:
            app.kill()  # else leaving `with` waits out the app's --run-for, hiding the cause
            raise
        finally:
            watchdog.cancel()
    failed = [e for e in events if e["event"] == "refresh_failed"]
    assert failed, events
    assert failed[0]["reason"] == "ConnectError"
    assert 0 < float(str(failed[0]["token_seconds_left"])) <= 3  # the held token still valid
    assert [e["event"] for e in events].count("token_received") == 2
    assert events[-1] == {"event": "stopped", "fetches": 2}


# An identity provider whose logins expire, by construction rather than by the clock: each
# JWT is minted already expired (past the broker's 30 s leeway) or valid, in the order the
# test sets, and the provider is asked for one before every request.
ID_TOKEN_COMMAND = """
import json, pathlib, sys
state = pathlib.Path(sys.argv[1])
tokens = json.loads((state / "tokens.json").read_text())
asked = int((state / "asked").read_text()) if (state / "asked").exists() else 0
(state / "asked").write_text(str(asked + 1))
print(tokens[min(asked, len(tokens) - 1)])
"""


def _login_command(tmp_path: Path, tokens: list[str]) -> tuple[str, Path]:
    """An id-token command handing out `tokens` in turn (then the last one again)."""
    (tmp_path / "tokens.json").write_text(json.dumps(tokens))
    script = tmp_path / "print_id_token.py"
    script.write_text(ID_TOKEN_COMMAND)
    return f"{sys.executable} {script} {tmp_path}", tmp_path / "asked"


def test_desktop_program_survives_its_login_expiring(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """The login the app started with expires while it runs: the refresh's JWT is refused
    (401), the provider is asked once more, hands out a renewed login, and the app goes on."""
    issuer = idp.issuers[0]
    valid = issuer.mint("desktop-relogin", AUDIENCE)
    expired = issuer.mint("desktop-relogin", AUDIENCE, lifetime=-120)
    renewed = issuer.mint("desktop-relogin", AUDIENCE, jti="renewed")
    command, asked = _login_command(tmp_path, [valid, expired, renewed])
    code, events, output = _desktop(
        *("--broker", short_lived_broker.url, "--id-token-command", command),
        *("--expires-in", "4", "--margin", "3", "--run-for", "5"),
    )
    assert code == 0, output
    names = [e["event"] for e in events]
    refused = names.index("id_token_refused")  # the expired login's 401
    assert names[:refused] == ["token_received", "videodb_capture_runtime_missing"]
    assert names[refused + 1] == "token_received"  # with the renewed one, at once
    assert names.count("id_token_refused") == 1
    assert "broker_refused" not in names
    assert int(asked.read_text()) == names.count("token_received") + 1
    assert "eyJ" not in output
    issued = [
        r
        for r in short_lived_broker.log_records()
        if r.get("event") == "token_issued" and r.get("user_id") == "desktop-relogin"
    ]
    assert len(issued) == names.count("token_received")


def test_desktop_program_gives_up_when_the_renewed_login_is_refused_too(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    expired = idp.issuers[0].mint("desktop-gone", AUDIENCE, lifetime=-120)
    command, asked = _login_command(tmp_path, [expired])
    code, events, _ = _desktop(
        "--broker", short_lived_broker.url, "--id-token-command", command, "--run-for", "5"
    )
    assert code == 1
    assert [e["event"] for e in events] == ["id_token_refused", "broker_refused"]
    assert events[-1]["code"] == "invalid_token"
    assert asked.read_text() == "2"  # asked once more, not again and again


def test_desktop_program_takes_its_token_from_a_file_or_stdin_never_the_command_line(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    bearer = idp.issuers[0].mint("desktop-stdin", AUDIENCE)
    code, _, output = _desktop("--broker", short_lived_broker.url, "--id-token", bearer)
    assert code == 2
    assert "--id-token-file" in output
    assert bearer not in output
    code, _, output = _desktop("--broker", short_lived_broker.url, f"--id-token={bearer}")
    assert (code, bearer in output) == (2, False)
    code, events, output = _desktop(
        "--broker", short_lived_broker.url, "--id-token-stdin", "--run-for", "1", stdin=bearer
    )
    assert code == 0, output
    assert events[0]["event"] == "token_received"
    missing = tmp_path / "no-such-file"
    code, events, _ = _desktop(
        "--broker", short_lived_broker.url, "--id-token-file", str(missing), "--run-for", "2.5"
    )
    assert code == 1  # never got a token
    assert {e.get("reason") for e in events if e["event"] == "refresh_failed"} == {
        "id_token_unavailable"
    }


def test_the_keeper_is_a_module_an_app_imports_with_its_own_provider(
    short_lived_broker: BrokerProcess, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """session_keeper as a Python app uses it: a callable provider (here an IdP SDK whose
    cached login has expired and is renewed when asked again), and a file reread each time."""
    from session_keeper import (
        BrokerRefused,
        SessionTokenKeeper,
        id_token_from_file,
    )

    issuer = idp.issuers[0]
    logins = [issuer.mint("module-user", AUDIENCE, lifetime=-120)]
    logins.append(issuer.mint("module-user", AUDIENCE))
    asked: list[str] = []

    def sdk_login() -> str:
        asked.append("asked")
        return logins[min(len(asked), len(logins)) - 1]

    seen: list[str] = []
    keeper = SessionTokenKeeper(
        short_lived_broker.url,
        sdk_login,
        expires_in=30,
        on_event=lambda event, **_: seen.append(event),
    )
    try:
        assert keeper.get().startswith("st-")
        assert keeper.create_session().startswith("cap-")
    finally:
        keeper.close()
    assert len(asked) == 3  # expired, renewed; then the renewed one for the session
    assert seen == [
        "id_token_refused",
        "token_received",
        "token_received",
        "capture_session_created",
    ]

    login_file = tmp_path / "id-token"
    login_file.write_text(issuer.mint("file-user-1", AUDIENCE))
    from_file = SessionTokenKeeper(short_lived_broker.url, id_token_from_file(login_file))
    try:
        from_file.get()
        login_file.write_text(issuer.mint("file-user-2", AUDIENCE) + "\n")  # a renewed login
        from_file.invalidate()
        login_file.write_text("not-a-jwt")
        with pytest.raises(BrokerRefused) as refused:
            from_file.invalidate()
    finally:
        from_file.close()
    assert (refused.value.status, refused.value.code) == (401, "invalid_token")
    users = [r.get("user_id") for r in short_lived_broker.log_records()]
    assert {"file-user-1", "file-user-2"} <= set(users)
