"""What the Redis transport raises: a broker URL it cannot use, or a Redis it cannot talk to."""

from __future__ import annotations

from collections.abc import Sequence

from ledgerflow.errors import InvalidInputError, LedgerflowError

__all__ = ["RedisTransportError", "RedisURLError", "RedisUnavailableError"]


class RedisURLError(InvalidInputError):
    """The broker URL cannot be used: a wrong scheme, or query parameters that are unknown,
    repeated or out of range.

    ``url`` is the URL with its password hidden; ``problems`` names each bad parameter
    (``streams=0: …``) and what it must be. Nothing was connected to.
    """

    def __init__(self, url: str, problems: Sequence[str]) -> None:
        self.url = url
        self.problems = tuple(problems)
        super().__init__(f"broker URL {url}: " + "; ".join(self.problems))

    def __reduce__(self) -> tuple[object, ...]:
        return RedisURLError, (self.url, self.problems)


class RedisTransportError(LedgerflowError):
    """Redis refused an operation of the transport (``READONLY`` after a failover, ``OOM``, a
    key of the wrong type). The message says which operation and on which Redis."""


class RedisUnavailableError(RedisTransportError):
    """Redis could not be reached, or did not answer in time. Nothing that failed was
    acknowledged: a wake-up that could not be published is sent again by the outbox relay, and
    a worker that cannot receive backs off and tries again."""
