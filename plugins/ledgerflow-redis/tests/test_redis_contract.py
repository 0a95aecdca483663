"""The Redis transport against the broker transport contract a plugin's broker transport must
pass too, on a private redis-server emptied for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ledgerflow.testing.contracts import BrokerTransportContract
from ledgerflow.transports import BrokerTransport

from ledgerflow_redis import RedisTransport
from ledgerflow_redis.testing import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this module's own, on a free port, keeping nothing on disk."""
    with RedisServer() as server:
        yield server


class TestRedisTransport(BrokerTransportContract):
    claim_wait = 0.3

    @pytest.fixture(autouse=True)
    def server(self, redis_server: RedisServer) -> None:
        redis_server.flush()
        self.redis_server = redis_server

    def make_transport(self) -> BrokerTransport:
        # two streams, so that ordering is checked across partitions; a claim look at every
        # receive and a claim time under claim_wait
        return RedisTransport(self.redis_server.url(streams=2, claim_idle=0.2, claim_every=0))
