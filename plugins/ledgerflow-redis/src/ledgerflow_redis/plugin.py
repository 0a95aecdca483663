"""The plugin ``redis`` (entry point ``ledgerflow_redis.plugin`` in the group ``ledgerflow``):
registers the Redis Streams transport for broker URLs ``redis://…`` and ``rediss://…``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ledgerflow.hookspecs import hookimpl
from ledgerflow.transports import Transport

from ledgerflow_redis.transport import RedisTransport

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = ["ledgerflow_register_transports"]


@hookimpl
def ledgerflow_register_transports(
    transports: dict[str, Callable[[str, Engine], Transport]],
) -> None:
    """``redis`` and ``rediss`` (TLS): :class:`~ledgerflow_redis.RedisTransport`, which
    reads its settings from the URL and connects on first use."""
    transports["redis"] = RedisTransport
    transports["rediss"] = RedisTransport
