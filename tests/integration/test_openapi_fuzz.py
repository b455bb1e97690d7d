"""schemathesis against the live OpenAPI document: no server error, no schema violation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.broker_process import BrokerProcess
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.integration.conftest import AUDIENCE

pytestmark = pytest.mark.integration


def test_schemathesis_finds_no_server_error_or_schema_violation(
    broker: BrokerProcess, idp: FakeIdentityProvider
) -> None:
    bearer = idp.issuers[0].mint("fuzzed-user", AUDIENCE)
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(cli),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            broker.url + "/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {bearer}",
            "--max-examples",
            "400",
            "--seed",
            "20261127",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
