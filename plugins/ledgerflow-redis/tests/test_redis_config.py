"""The transport's configuration from its URL, the errors that name each bad parameter, and the
plugin as installed: its entry point registers the transport for ``redis://`` and
``rediss://``."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledgerflow.engine import Engine
from ledgerflow.errors import InvalidInputError
from ledgerflow.plugins import Plugins
from ledgerflow.transports import BrokerTransport
from redis.connection import SSLConnection
from redis.utils import HIREDIS_AVAILABLE

from ledgerflow_redis import RedisSettings, RedisTransport, RedisURLError


def test_a_bare_url_takes_the_defaults() -> None:
    settings = RedisSettings.from_url("redis://localhost:6379/0")
    assert settings == RedisSettings(connection_url="redis://localhost:6379/0")
    assert (settings.prefix, settings.streams, settings.group) == ("ledgerflow", 4, "ledgerflow")
    assert (settings.maxlen, settings.max_deliveries) == (1_000_000, 5)
    assert (settings.claim_idle, settings.claim_every) == (30.0, 5.0)


def test_every_parameter_is_read_and_left_out_of_the_url_redis_py_connects_with() -> None:
    settings = RedisSettings.from_url(
        "redis://:pw@cache.internal:6380/2?prefix=acme&streams=8&group=billing&maxlen=5000"
        "&max_deliveries=3&claim_idle=0.5&claim_every=0&socket_timeout=20"
        "&socket_connect_timeout=2&retries=0&client_name=worker-1"
    )
    assert settings.prefix == "acme"
    assert settings.streams == 8
    assert settings.group == "billing"
    assert settings.maxlen == 5000
    assert settings.max_deliveries == 3
    assert settings.claim_idle == 0.5
    assert settings.claim_every == 0.0
    assert settings.socket_timeout == 20.0
    assert settings.socket_connect_timeout == 2.0
    assert settings.retries == 0
    assert settings.connection_url == "redis://:pw@cache.internal:6380/2?client_name=worker-1"


def test_the_transports_keys_follow_prefix_and_streams() -> None:
    transport = RedisTransport("redis://localhost:6379/0?prefix=acme&streams=3")
    try:
        assert transport.streams == ("acme:wakeups:0", "acme:wakeups:1", "acme:wakeups:2")
        assert transport.dead_letter_stream == "acme:dead-letters"
        assert transport.max_deliveries == 5
    finally:
        transport.close()


def test_redis_py_gets_the_connection_and_its_own_parameters() -> None:
    transport = RedisTransport(
        "redis://:secret@cache.internal:6380/2?socket_timeout=7&client_name=worker-1"
    )
    try:
        options = transport.redis.connection_pool.connection_kwargs
        assert options["host"] == "cache.internal"
        assert options["port"] == 6380
        assert options["db"] == 2
        assert options["password"] == "secret"
        assert options["socket_timeout"] == 7.0
        assert options["client_name"] == "worker-1"
        assert options["protocol"] == 2
    finally:
        transport.close()


def test_replies_are_parsed_by_hiredis() -> None:
    assert HIREDIS_AVAILABLE  # redis[hiredis] is a dependency


def test_rediss_connects_with_tls() -> None:
    transport = RedisTransport("rediss://cache.internal:6380/0?ssl_cert_reqs=none")
    try:
        assert transport.redis.connection_pool.connection_class is SSLConnection
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("streams=0", "streams=0: must be a whole number from 1 to 1024"),
        ("streams=four", "streams=four: must be a whole number from 1 to 1024"),
        ("streams=1025", "streams=1025: must be a whole number from 1 to 1024"),
        ("streams=2.5", "streams=2.5: must be a whole number"),
        ("maxlen=-1", "maxlen=-1: must be a whole number of entries (0: no cap)"),
        ("max_deliveries=0", "max_deliveries=0: must be a whole number from 1 to 1000"),
        ("claim_idle=0", "claim_idle=0: must be a number of seconds, more than 0"),
        ("claim_idle=nan", "claim_idle=nan: must be a number of seconds"),
        ("claim_idle=soon", "claim_idle=soon: must be a number of seconds"),
        ("claim_every=-1", "claim_every=-1: must be a number of seconds, 0 or more"),
        ("socket_timeout=0", "socket_timeout=0: must be a number of seconds, more than 0"),
        ("retries=21", "retries=21: must be a whole number from 0 to 20"),
        ("prefix=a%20b", "prefix=a b: must be a name without spaces"),
        ("prefix=a|b", "prefix=a|b: must be a name without spaces, '|'"),
        ("group=", "group=: must be a name"),
        ("stream=4", "stream: unknown parameter (known: prefix, streams, group"),
        ("protocol=3", "protocol: unknown parameter"),
        ("streams=2&streams=3", "streams: given more than once"),
    ],
)
def test_a_bad_parameter_is_named_with_what_it_must_be(query: str, problem: str) -> None:
    with pytest.raises(RedisURLError) as caught:
        RedisSettings.from_url(f"redis://localhost:6379/0?{query}")
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(problem)
    assert isinstance(caught.value, InvalidInputError)


def test_every_bad_parameter_is_named_at_once_and_the_password_is_not_shown() -> None:
    with pytest.raises(RedisURLError) as caught:
        RedisTransport("redis://:hunter2@localhost:6379/0?streams=0&claim_idle=-1&colour=red")
    message = str(caught.value)
    assert "hunter2" not in message
    assert message.startswith("broker URL redis://:***@localhost:6379/0?streams=0")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "streams=0",
        "claim_idle=-1",
        "colour",
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost:6379/0", "the scheme must be redis:// or rediss:// (TLS), not 'http'"),
        ("redis://localhost:6379/zero", "the path must be a database number"),
        ("redis://localhost:6379/0/1", "the path must be a database number"),
        ("redis://localhost:port/0", "the port must be a number from 1 to 65535"),
        ("redis://localhost:6379/0?max_connections=many", "Invalid value for 'max_connections'"),
    ],
)
def test_a_url_redis_cannot_use_is_refused(url: str, problem: str) -> None:
    with pytest.raises(RedisURLError, match=r"^broker URL ") as caught:
        RedisSettings.from_url(url)
    assert caught.value.problems[0].startswith(problem)


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match="streams must be at least 1"):
        RedisSettings(streams=0)
    with pytest.raises(ValueError, match="claim_idle must be more than 0"):
        RedisSettings(claim_idle=0)
    with pytest.raises(ValueError, match="prefix must be a name"):
        RedisSettings(prefix="a b")


def test_a_blocking_receive_never_outlives_the_socket_timeout() -> None:
    assert RedisSettings(socket_timeout=10).max_block == 9.0
    assert RedisSettings(socket_timeout=1).max_block == 0.5


def test_the_repr_shows_no_password() -> None:
    transport = RedisTransport("redis://:hunter2@localhost:6379/0")
    try:
        assert "hunter2" not in repr(transport)
        assert "hunter2" not in repr(transport.settings)
        assert transport.url == "redis://:***@localhost:6379/0"
    finally:
        transport.close()


def test_the_installed_plugin_registers_redis_and_rediss() -> None:
    plugins = Plugins()
    transports = plugins.transports()
    assert transports["redis"] is RedisTransport
    assert transports["rediss"] is RedisTransport
    (info,) = [p for p in plugins.describe() if p.name == "redis"]
    assert info.distribution == "ledgerflow-redis"
    assert info.registered["transports"] == ("redis", "rediss")
    assert not info.errors


def test_an_engine_builds_the_transport_from_a_broker_url(tmp_path: Path) -> None:
    engine = Engine(f"sqlite:///{tmp_path}/ledger.db")
    transport = engine.plugins.transport_for("redis://localhost:6379/0?streams=2", engine)
    try:
        assert isinstance(transport, RedisTransport)
        assert isinstance(transport, BrokerTransport)
        assert transport.engine is engine
        assert len(transport.streams) == 2
    finally:
        transport.close()
        engine.store.engine.dispose()
