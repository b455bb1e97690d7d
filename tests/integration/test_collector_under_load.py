"""Python's collector under a login storm: the requests in flight do not set off its passes."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest

from app.sandbox.stand_in_videodb import StandInVideoDB
from harness.broker_process import BrokerProcess
from tests.fakes.identity_provider import FakeIdentityProvider
from tests.integration.conftest import AUDIENCE, TOKEN_PATH

pytestmark = pytest.mark.integration

IN_FLIGHT = 64  # new users at once, each held at VideoDB for a moment
BATCHES = 3


def _young_passes(broker: BrokerProcess) -> int:
    """The collector's passes over its youngest generation so far (prometheus_client's own
    series, from `gc.get_stats()`)."""
    text = httpx.get(broker.url + "/metrics").text
    found = re.search(r'^python_gc_collections_total\{generation="0"\} (\S+)$', text, re.M)
    assert found, "the broker's /metrics carry the collector's series"
    return int(float(found.group(1)))


def test_new_users_in_flight_together_set_off_no_young_collector_passes(
    broker: BrokerProcess, idp: FakeIdentityProvider, videodb: StandInVideoDB
) -> None:
    """With Python's default (a young pass every 700 net new objects) these 192 misses made
    30-40 passes, each moving the requests in flight to the older generations, whose passes
    then walk every cached user (7-18 % of a miss's CPU, docs/performance.md). The broker
    spaces them beyond what 64 requests in flight hold: at most one, if the cached users'
    growth crosses the threshold in between."""
    videodb.delay = 0.3  # fewer together on a slow machine only makes fewer objects

    async def storm(batches: int) -> list[int]:
        statuses: list[int] = []
        limits = httpx.Limits(max_connections=IN_FLIGHT)
        async with httpx.AsyncClient(base_url=broker.url, limits=limits, timeout=30) as client:
            for _ in range(batches):
                bearers = [
                    idp.issuers[-1].mint(f"storm-{uuid.uuid4().hex[:10]}", AUDIENCE)
                    for _ in range(IN_FLIGHT)
                ]
                answers = await asyncio.gather(
                    *(
                        client.post(TOKEN_PATH, headers={"Authorization": f"Bearer {bearer}"})
                        for bearer in bearers
                    )
                )
                statuses += [answer.status_code for answer in answers]
        return statuses

    # The first calls build what a worker builds once (the aiohttp session, modules imported
    # on first use): one batch first, not counted.
    assert asyncio.run(storm(1)) == [200] * IN_FLIGHT
    before = _young_passes(broker)
    statuses = asyncio.run(storm(BATCHES))
    assert statuses == [200] * IN_FLIGHT * BATCHES
    assert len(videodb.calls) == IN_FLIGHT * (BATCHES + 1)  # every one a miss
    assert _young_passes(broker) - before <= 1
