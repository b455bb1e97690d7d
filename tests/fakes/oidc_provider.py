"""panva's oidc-provider (npm, OpenID Certified) on loopback: an identity provider nobody here
wrote, issuing RS256 JWT access tokens by client credentials. `.ci/run` installs it into
.cache/oidc-provider from tests/fakes/node_oidc_provider/package-lock.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from app.sandbox.dev_issuer import SigningKey
from harness.broker_process import REPO, free_port

SOURCE = REPO / "tests" / "fakes" / "node_oidc_provider"
INSTALLED = REPO / ".cache" / "oidc-provider"
CLIENT_ID = "capture-app"
CLIENT_SECRET = "capture-app-secret-for-tests-only"
INSTALL_HINT = (
    "oidc-provider is not installed: mkdir -p .cache/oidc-provider && cp "
    "tests/fakes/node_oidc_provider/package*.json .cache/oidc-provider/ && "
    "npm ci --prefix .cache/oidc-provider"
)


def _require_installed() -> str:
    node = shutil.which("node")
    if node is None or not (INSTALLED / "node_modules" / "oidc-provider").is_dir():
        message = INSTALL_HINT if node else "node is not installed (apt-get install nodejs)"
        if os.environ.get("BROKER_TESTS_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return node


class OidcProvider:
    """The provider as a child process; `rotate()` restarts it on its port with a new key."""

    def __init__(self, audience: str) -> None:
        self._node = _require_installed()
        shutil.copy(SOURCE / "server.mjs", INSTALLED / "server.mjs")  # beside its node_modules
        self.audience = audience
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="oidc-provider-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.key = SigningKey("RS256", "before-rotation")

    def start(self) -> OidcProvider:
        """Start with the current key; wait until its discovery document answers."""
        private = self._dir / "jwks.json"
        private.write_text(json.dumps({"keys": [self.key.private_jwk()]}))
        with (self._dir / "provider.log").open("ab") as log:  # the child keeps its own copy
            self._proc = subprocess.Popen(
                [
                    self._node,
                    str(INSTALLED / "server.mjs"),
                    str(self.port),
                    str(private),
                    self.audience,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"oidc-provider exited:\n{self.output()}")
            try:
                url = self.issuer + "/.well-known/openid-configuration"
                if httpx.get(url, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"oidc-provider did not start:\n{self.output()}")

    def output(self) -> str:
        """What the provider printed."""
        return (self._dir / "provider.log").read_text(errors="replace")

    def access_token(self, resource: str | None = None) -> str:
        """A JWT access token by client credentials, for `resource` (default: the audience)."""
        form = {"grant_type": "client_credentials", "scope": "capture"}
        if resource:
            form["resource"] = resource
        resp = httpx.post(self.issuer + "/token", data=form, auth=(CLIENT_ID, CLIENT_SECRET))
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token

    def rotate(self) -> None:
        """Restart with a new signing key only: the old one is gone from its JWKS."""
        self.stop()
        self.key = SigningKey("RS256", "after-rotation")
        self.start()

    def stop(self) -> None:
        """Stop the process."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
