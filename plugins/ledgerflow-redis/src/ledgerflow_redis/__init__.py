"""ledgerflow-redis: a Redis Streams transport for ledgerflow's workers.

Installed, the distribution's entry point registers :class:`RedisTransport` for broker URLs
``redis://…`` and ``rediss://…`` (plugin ``redis``): ``ledgerflow worker --broker
redis://host:6379/0?streams=8``. Wake-ups are spread over partitioned streams by execution,
read through one consumer group per worker pool, taken over from dead workers after
``claim_idle`` seconds, and moved to a dead-letter stream when they do not parse or keep
failing. The ledger stays the record: Redis only says where work is.
"""

from __future__ import annotations

from ledgerflow_redis.errors import RedisTransportError, RedisUnavailableError, RedisURLError
from ledgerflow_redis.messages import VERSION, WakeupMessage
from ledgerflow_redis.settings import RedisSettings
from ledgerflow_redis.transport import ID_SEPARATOR, RedisTransport

__all__ = [
    "ID_SEPARATOR",
    "VERSION",
    "RedisSettings",
    "RedisTransport",
    "RedisTransportError",
    "RedisURLError",
    "RedisUnavailableError",
    "WakeupMessage",
]
