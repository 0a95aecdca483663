"""The transport's configuration, read from the broker URL's query string.

``redis://[[user]:password@]host:port/db?prefix=ledgerflow&streams=4&group=ledgerflow&…``;
``rediss://`` for TLS. Every problem of a URL is collected before raising, so one
:class:`~ledgerflow_redis.errors.RedisURLError` names them all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs
from redis.connection import parse_url

from ledgerflow_redis.errors import RedisURLError

__all__ = ["CONNECTION_PARAMETERS", "SCHEMES", "RedisSettings", "display_url"]

SCHEMES = ("redis", "rediss")
"""The URL schemes of the transport: ``rediss`` connects with TLS."""

MAX_STREAMS = 1024
"""The most partitions a transport may have: each receive reads every one of them."""

CONNECTION_PARAMETERS = frozenset(
    {
        "client_name",
        "health_check_interval",
        "max_connections",
        "socket_keepalive",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_keyfile",
    }
)
"""redis-py's own connection parameters that the URL may carry too; they are handed to
redis-py as they are. (``socket_timeout`` and ``socket_connect_timeout`` are the transport's,
see :class:`RedisSettings`; ``protocol`` is not accepted: the transport speaks RESP2.)"""

_NAME = re.compile(r"[^\s|{}]+")


def _name(value: str) -> bool:
    return _NAME.fullmatch(value) is not None


def _whole(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(text)
    return int(text)


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


@attrs.frozen(kw_only=True)
class _Parameter:
    parse: Callable[[str], Any]
    ok: Callable[[Any], bool]
    must_be: str


_PARAMETERS: dict[str, _Parameter] = {
    "prefix": _Parameter(parse=str, ok=_name, must_be="a name without spaces, '|', '{' or '}'"),
    "streams": _Parameter(
        parse=_whole,
        ok=lambda n: 1 <= n <= MAX_STREAMS,
        must_be=f"a whole number from 1 to {MAX_STREAMS}",
    ),
    "group": _Parameter(parse=str, ok=_name, must_be="a name without spaces, '|', '{' or '}'"),
    "maxlen": _Parameter(
        parse=_whole, ok=lambda n: True, must_be="a whole number of entries (0: no cap)"
    ),
    "max_deliveries": _Parameter(
        parse=_whole, ok=lambda n: 1 <= n <= 1000, must_be="a whole number from 1 to 1000"
    ),
    "claim_idle": _Parameter(
        parse=_seconds, ok=lambda s: s > 0, must_be="a number of seconds, more than 0"
    ),
    "claim_every": _Parameter(
        parse=_seconds, ok=lambda s: s >= 0, must_be="a number of seconds, 0 or more"
    ),
    "socket_timeout": _Parameter(
        parse=_seconds,
        ok=lambda s: 0 < s <= 3600,
        must_be="a number of seconds, more than 0 and at most 3600",
    ),
    "socket_connect_timeout": _Parameter(
        parse=_seconds,
        ok=lambda s: 0 < s <= 3600,
        must_be="a number of seconds, more than 0 and at most 3600",
    ),
    "retries": _Parameter(
        parse=_whole, ok=lambda n: n <= 20, must_be="a whole number from 0 to 20"
    ),
}


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be more than 0, not {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be 0 or more, not {value!r}")


def _at_least(low: int) -> Callable[[object, attrs.Attribute[Any], int], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < low:
            raise ValueError(f"{attribute.name} must be at least {low}, not {value!r}")

    return check


def _a_name(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _name(value):
        raise ValueError(f"{attribute.name} must be a name without spaces, '|', '{{' or '}}'")


@attrs.frozen(kw_only=True)
class RedisSettings:
    """How a :class:`~ledgerflow_redis.RedisTransport` uses Redis; each field is the URL
    query parameter of the same name.

    - ``prefix``: the start of every key: streams ``{prefix}:wakeups:{n}``, dead letters
      ``{prefix}:dead-letters``;
    - ``streams``: how many partitions wake-ups are spread over, by a CRC-32 of the execution
      id (one execution's wake-ups stay in one stream, in order);
    - ``group``: the consumer group, one per worker pool;
    - ``maxlen``: a hard cap on each stream's length, applied approximately at each publish
      (``MAXLEN ~``); 0 for none. Trimming proper is :meth:`RedisTransport.trim`;
    - ``max_deliveries``: how many times a message may be handed out before the worker moves
      it to the dead letters;
    - ``claim_idle``: seconds after which a message received but not acknowledged is taken
      over by another consumer (a dead worker's);
    - ``claim_every``: seconds between two looks for such messages, per transport;
    - ``socket_timeout``, ``socket_connect_timeout``: seconds a command, and a connection,
      may take; a blocking receive waits at most ``socket_timeout - 1`` seconds (half of it
      under 2 s), so that it never outlives its socket's timeout;
    - ``retries``: how many times redis-py tries a command again after a lost connection or a
      timeout before the error reaches the caller.
    """

    prefix: str = attrs.field(default="ledgerflow", validator=_a_name)
    streams: int = attrs.field(default=4, validator=_at_least(1))
    group: str = attrs.field(default="ledgerflow", validator=_a_name)
    maxlen: int = attrs.field(default=1_000_000, validator=_at_least(0))
    max_deliveries: int = attrs.field(default=5, validator=_at_least(1))
    claim_idle: float = attrs.field(default=30.0, validator=_positive)
    claim_every: float = attrs.field(default=5.0, validator=_not_negative)
    socket_timeout: float = attrs.field(default=10.0, validator=_positive)
    socket_connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    retries: int = attrs.field(default=2, validator=_at_least(0))
    connection_url: str = attrs.field(default="redis://localhost:6379/0", repr=False)
    """The URL redis-py connects with: the broker URL without the transport's parameters.
    Not shown in ``repr``: it may hold a password."""

    @property
    def max_block(self) -> float:
        """The longest a blocking receive waits, in seconds."""
        timeout = self.socket_timeout
        return timeout - 1.0 if timeout >= 2.0 else timeout / 2

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """The settings of broker ``url``; raises :class:`RedisURLError` naming every bad
        parameter."""
        if not isinstance(url, str):
            raise RedisURLError(repr(url), ["not a URL"])
        shown = display_url(url)
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise RedisURLError(shown, [f"not a URL ({exc})"]) from None
        if parts.scheme.lower() not in SCHEMES:
            raise RedisURLError(
                shown, [f"the scheme must be redis:// or rediss:// (TLS), not {parts.scheme!r}"]
            )
        problems: list[str] = []
        try:
            parts.port  # noqa: B018  # parsed on access
        except ValueError:
            problems.append(
                f"the port must be a number from 1 to 65535, as in {parts.scheme}://host:6379/0"
            )
        if not re.fullmatch(r"/?|/[0-9]+", parts.path):
            problems.append(
                f"the path must be a database number, as in {parts.scheme}://host:6379/0, "
                f"not {parts.path!r}"
            )
        ours: dict[str, Any] = {}
        passed: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, text in parse_qsl(parts.query, keep_blank_values=True):
            if name in seen:
                problems.append(f"{name}: given more than once")
                continue
            seen.add(name)
            parameter = _PARAMETERS.get(name)
            if parameter is None:
                if name in CONNECTION_PARAMETERS:
                    passed.append((name, text))
                else:
                    known = ", ".join([*_PARAMETERS, *sorted(CONNECTION_PARAMETERS)])
                    problems.append(f"{name}: unknown parameter (known: {known})")
                continue
            try:
                value = parameter.parse(text)
                valid = parameter.ok(value)
            except ValueError:
                valid = False
            if not valid:
                problems.append(f"{name}={text}: must be {parameter.must_be}")
                continue
            ours[name] = value
        connection_url = urlunsplit(
            (parts.scheme.lower(), parts.netloc, parts.path, urlencode(passed), "")
        )
        if problems:
            raise RedisURLError(shown, problems)
        try:
            parse_url(connection_url)  # type: ignore[no-untyped-call]  # redis-py's checks
        except ValueError as exc:
            raise RedisURLError(shown, [str(exc)]) from None
        return cls(**ours, connection_url=connection_url)


def display_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = quote(parts.username or "", safe="")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        netloc = f"{user}:***@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<a malformed URL>"
