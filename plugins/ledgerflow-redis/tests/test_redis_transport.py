"""The transport against a real, private redis-server: publish, receive, acknowledge; the
partitions; consumer groups; claims of a dead consumer's messages; dead letters; a Redis that
restarts empty or is down."""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import pytest
import redis
from ledgerflow.transports import Delivery, Wakeup

from ledgerflow_redis import ID_SEPARATOR, RedisTransport, RedisUnavailableError
from ledgerflow_redis.testing import Pending, RedisServer

TENANT = "acme"

Connect = Callable[..., RedisTransport]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this module's own, on a free port, keeping nothing on disk."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    """The module's Redis, emptied for the test."""
    redis_server.flush()
    return redis_server


@pytest.fixture
def connect(server: RedisServer) -> Iterator[Connect]:
    """Builds transports on the test's Redis (``connect(streams=2, group="b")``), closed
    after the test."""
    transports: list[RedisTransport] = []

    def build(**parameters: object) -> RedisTransport:
        transport = RedisTransport(server.url(**parameters))
        transports.append(transport)
        return transport

    yield build
    for transport in transports:
        transport.close()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server for one test, which it may stop and restart."""
    with RedisServer() as server:
        yield server


def wakeup(execution: str, event: int | str = 1) -> Wakeup:
    return Wakeup(execution_id=execution, tenant=TENANT, event_id=f"{execution}/{event}")


def receive_all(transport: RedisTransport, consumer: str, expected: int) -> list[Delivery]:
    """Receive until ``expected`` messages came (or a short while passed)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + 5
    while len(got) < expected and time.monotonic() < deadline:
        got += transport.receive(consumer, count=expected - len(got), block=0.05)
    return got


def pending(server: RedisServer, stream: str) -> dict[str, int]:
    """The group's pending entries of ``stream``: entry id → delivery count."""
    return {entry_id: p.deliveries for entry_id, p in server.pending(stream).items()}


# --------------------------------------------------------------------------------------------
# Publish, receive, acknowledge
# --------------------------------------------------------------------------------------------


def test_a_published_wakeup_is_received_once_and_after_its_ack_never_again(
    connect: Connect, server: RedisServer
) -> None:
    transport = connect(streams=2, claim_idle=0.05, claim_every=0)
    transport.publish([wakeup("inv-1")])

    (delivery,) = transport.receive("worker-a", count=10, block=1)

    assert delivery.wakeup == wakeup("inv-1")
    assert delivery.problem is None
    assert delivery.deliveries == 1
    assert delivery.body == {
        "v": "1",
        "execution_id": "inv-1",
        "tenant": TENANT,
        "event_id": "inv-1/1",
    }
    stream = transport.stream_for("inv-1")
    assert delivery.id.startswith(stream + ID_SEPARATOR)
    transport.ack([delivery])
    assert pending(server, stream) == {}
    time.sleep(0.1)  # past claim_idle: nothing is left to claim either
    assert transport.receive("worker-b", count=10, block=0) == []


def test_the_delivery_id_is_the_stream_and_the_entry_id(
    connect: Connect, server: RedisServer
) -> None:
    transport = connect(streams=3)
    transport.publish([wakeup("inv-7")])
    (delivery,) = transport.receive("worker-a", count=1, block=1)
    stream, entry_id = delivery.id.split("|")
    (only,) = server.entries(stream)
    assert stream == transport.stream_for("inv-7")
    assert entry_id == only.id


def test_a_fresh_read_counts_one_delivery_as_redis_does(
    connect: Connect, server: RedisServer
) -> None:
    transport = connect(streams=1)
    transport.publish([wakeup("inv-1"), wakeup("inv-2")])
    deliveries = transport.receive("worker-a", count=2, block=1)
    assert [d.deliveries for d in deliveries] == [1, 1]
    assert set(pending(server, transport.streams[0]).values()) == {1}  # XPENDING says 1 too


def test_wakeups_published_before_any_worker_existed_are_received(
    connect: Connect, server: RedisServer
) -> None:
    publisher = connect(streams=2)
    publisher.publish([wakeup(f"inv-{n}") for n in range(5)])
    assert sum(server.length(s) for s in publisher.streams) == 5
    with server.client() as client:
        assert not any(client.xinfo_groups(s) for s in publisher.streams)  # no group yet

    worker = connect(streams=2)  # its group is created at id 0, not at $
    assert len(receive_all(worker, "worker-a", 5)) == 5


def test_a_blocking_receive_returns_as_soon_as_a_wakeup_is_published(connect: Connect) -> None:
    transport = connect(streams=4)
    transport.receive("worker-a", count=1, block=0)  # the groups exist
    timer = threading.Timer(0.2, transport.publish, [[wakeup("inv-late")]])
    timer.start()
    started = time.monotonic()
    deliveries = transport.receive("worker-a", count=1, block=3)
    waited = time.monotonic() - started
    timer.join()
    assert [d.wakeup for d in deliveries] == [wakeup("inv-late")]
    assert 0.1 < waited < 1.5


def test_a_blocking_receive_waits_less_than_the_socket_timeout(connect: Connect) -> None:
    transport = connect(socket_timeout=1)  # so at most 0.5 s of BLOCK
    started = time.monotonic()
    assert transport.receive("worker-a", count=1, block=30) == []
    assert 0.4 < time.monotonic() - started < 0.9


def test_receive_gives_at_most_count_and_holds_the_rest_back_for_the_next_call(
    connect: Connect, server: RedisServer
) -> None:
    transport = connect(streams=4)
    executions = [f"inv-{n}" for n in range(40)]
    transport.publish([wakeup(x) for x in executions])
    assert all(server.length(s) > 0 for s in transport.streams)

    started = time.monotonic()
    batches = [transport.receive("worker-a", count=1, block=2) for _ in range(40)]

    assert time.monotonic() - started < 1  # what was held back came at once
    assert all(len(batch) == 1 for batch in batches)
    assert sorted(d.wakeup.execution_id for (d,) in batches if d.wakeup) == sorted(executions)
    assert transport.receive("worker-a", count=1, block=0) == []


def test_close_lets_another_consumer_claim_what_was_held_back_at_once(
    connect: Connect, server: RedisServer
) -> None:
    first = connect(streams=4, claim_idle=60, claim_every=0)
    first.publish([wakeup(f"inv-{n}") for n in range(40)])
    (taken,) = first.receive("worker-a", count=1, block=0)  # one from each stream was read
    first.close()

    second = connect(streams=4, claim_idle=60, claim_every=0)  # a long claim_idle
    others = receive_all(second, "worker-b", 39)
    claimed = [d for d in others if d.deliveries > 1]

    assert len(claimed) == 3  # the three held back, at once, not after 60 s
    assert all(d.deliveries == 2 for d in claimed)  # released without counting a delivery
    assert taken.id not in {d.id for d in others}


# --------------------------------------------------------------------------------------------
# Partitions and groups
# --------------------------------------------------------------------------------------------


def test_an_executions_stream_is_a_crc32_of_its_id_the_same_in_every_process(
    connect: Connect,
) -> None:
    transport = connect(streams=4)
    assert zlib.crc32(b"invoice-42") == 4091648539  # a constant, unlike the salted hash()
    assert transport.stream_for("invoice-42") == "ledgerflow:wakeups:3"  # 4091648539 % 4
    spread = {transport.stream_for(f"invoice-{n}") for n in range(100)}
    assert spread == set(transport.streams)


def test_one_executions_wakeups_stay_in_one_stream_in_the_order_published(
    connect: Connect, server: RedisServer
) -> None:
    transport = connect(streams=4)
    executions = [f"inv-{n}" for n in range(8)]
    batch = [wakeup(x, event) for event in range(10) for x in executions]
    transport.publish(batch[:40])
    transport.publish(batch[40:])

    deliveries = receive_all(transport, "worker-a", len(batch))

    assert len(deliveries) == len(batch)
    for execution in executions:
        mine = [d for d in deliveries if d.wakeup and d.wakeup.execution_id == execution]
        streams = {d.id.split("|")[0] for d in mine}
        assert streams == {transport.stream_for(execution)}
        assert [d.wakeup.event_id for d in mine if d.wakeup] == [
            f"{execution}/{event}" for event in range(10)
        ]


def test_two_consumers_of_one_group_never_both_get_a_message(connect: Connect) -> None:
    transport = connect(streams=3)
    total = 300
    got: dict[str, list[str]] = {"worker-a": [], "worker-b": []}

    def consume(consumer: str) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sum(map(len, got.values())) < total:
            deliveries = transport.receive(consumer, count=7, block=0.05)
            got[consumer] += [d.id for d in deliveries]
            transport.ack(deliveries)

    threads = [threading.Thread(target=consume, args=(c,)) for c in got]
    for thread in threads:
        thread.start()
    for n in range(0, total, 30):
        transport.publish([wakeup(f"inv-{n + k}") for k in range(30)])
    for thread in threads:
        thread.join()

    assert not set(got["worker-a"]) & set(got["worker-b"])
    assert len(got["worker-a"]) + len(got["worker-b"]) == total
    assert got["worker-a"]
    assert got["worker-b"]


def test_each_group_a_worker_pool_gets_every_message(connect: Connect) -> None:
    billing = connect(streams=2, group="billing")
    shipping = connect(streams=2, group="shipping")
    billing.publish([wakeup(f"inv-{n}") for n in range(10)])
    assert len(receive_all(billing, "b-1", 10)) == 10
    assert len(receive_all(shipping, "s-1", 10)) == 10


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------


def test_a_dead_consumers_messages_are_claimed_after_claim_idle_with_deliveries_counted(
    connect: Connect, server: RedisServer
) -> None:
    transport = connect(streams=2, claim_idle=0.2, claim_every=0)
    transport.publish([wakeup(f"inv-{n}") for n in range(3)])
    dead = receive_all(transport, "worker-dead", 3)  # received, never acknowledged
    assert transport.receive("worker-b", count=10, block=0) == []  # not idle long enough

    time.sleep(0.25)
    claimed = transport.receive("worker-b", count=10, block=0)

    assert sorted(d.id for d in claimed) == sorted(d.id for d in dead)
    assert [d.deliveries for d in claimed] == [2, 2, 2]
    for delivery in claimed:
        stream, entry_id = delivery.id.split("|")
        assert server.pending(stream)[entry_id] == Pending(consumer="worker-b", deliveries=2)

    time.sleep(0.25)  # worker-b dies too
    again = transport.receive("worker-c", count=10, block=0)
    assert [d.deliveries for d in again] == [3, 3, 3]
    transport.ack(again)
    assert all(pending(server, s) == {} for s in transport.streams)


def test_claims_look_only_every_claim_every_seconds(connect: Connect) -> None:
    transport = connect(streams=1, claim_idle=0.05, claim_every=0.5)
    transport.receive("worker-b", count=1, block=0)  # the first look: nothing to claim
    transport.publish([wakeup("inv-1")])
    receive_all(transport, "worker-dead", 1)
    time.sleep(0.1)
    assert transport.receive("worker-b", count=1, block=0) == []  # idle, but no look is due
    time.sleep(0.45)
    assert len(transport.receive("worker-b", count=1, block=0)) == 1


def test_claims_take_at_most_count_and_resume_where_they_stopped(connect: Connect) -> None:
    transport = connect(streams=1, claim_idle=0.05, claim_every=0)
    transport.publish([wakeup(f"inv-{n}") for n in range(5)])
    dead = receive_all(transport, "worker-dead", 5)
    time.sleep(0.1)
    first = transport.receive("worker-b", count=2, block=0)
    second = transport.receive("worker-b", count=2, block=0)
    third = transport.receive("worker-b", count=2, block=0)
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert [d.id for d in first + second + third] == [d.id for d in dead]


def test_each_claim_look_starts_one_stream_further(connect: Connect) -> None:
    transport = connect(streams=2, claim_idle=0.05, claim_every=0)
    executions = [f"inv-{n}" for n in range(20)]
    transport.publish([wakeup(x) for x in executions])
    receive_all(transport, "worker-dead", 20)
    time.sleep(0.1)
    first = transport.receive("worker-b", count=1, block=0)
    second = transport.receive("worker-b", count=1, block=0)
    streams = [d.id.split("|")[0] for d in first + second]
    assert sorted(streams) == list(transport.streams)  # one does not keep the other waiting
    assert [d.deliveries for d in first + second] == [2, 2]


def test_a_pending_message_deleted_from_its_stream_is_dropped_from_claims_and_logged(
    connect: Connect, server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    transport = connect(streams=1, claim_idle=0.05, claim_every=0)
    transport.publish([wakeup(f"inv-{n}") for n in range(3)])
    receive_all(transport, "worker-dead", 3)
    with server.client() as client:  # what a MAXLEN cap does
        client.xtrim(transport.streams[0], maxlen=1, approximate=False)
    time.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="ledgerflow_redis"):
        claimed = transport.receive("worker-b", count=10, block=0)

    assert [d.wakeup for d in claimed] == [wakeup("inv-2")]
    assert "2 wake-ups pending in group ledgerflow had been deleted" in caplog.text
    assert len(pending(server, transport.streams[0])) == 1  # Redis dropped the other two


# --------------------------------------------------------------------------------------------
# Malformed messages and dead letters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({b"hello": b"world"}, "no version field 'v': not a ledgerflow wake-up"),
        (
            {b"v": b"2", b"execution_id": b"inv-1", b"tenant": b"acme", b"event_id": b"e"},
            "unknown version v='2'",
        ),
        (
            {b"v": b"1", b"tenant": b"acme", b"event_id": b"e"},
            "a version 1 wake-up that does not parse: required field missing @ $.execution_id",
        ),
        (
            {b"v": b"1", b"execution_id": b"", b"tenant": b"acme", b"event_id": b"e"},
            "a version 1 wake-up that does not parse: execution_id must be a non-empty string",
        ),
        (
            {b"v": b"1", b"execution_id": b"\xff\xfe", b"tenant": b"acme", b"event_id": b"e"},
            "not UTF-8: field 'execution_id'",
        ),
    ],
)
def test_a_malformed_message_arrives_with_its_problem_and_dead_letter_moves_it(
    connect: Connect, server: RedisServer, fields: dict[bytes, bytes], problem: str
) -> None:
    transport = connect(streams=1)
    transport.receive("worker-a", count=1, block=0)  # the group exists
    with server.client() as client:
        client.xadd(transport.streams[0], fields)

    (delivery,) = transport.receive("worker-a", count=1, block=1)

    assert delivery.wakeup is None
    assert delivery.problem is not None
    assert delivery.problem.startswith(problem)
    letter_id = transport.dead_letter(delivery, f"malformed message: {delivery.problem}")

    (letter,) = server.entries(transport.dead_letter_stream)
    assert letter.id == letter_id
    assert letter.fields["original_id"] == delivery.id
    assert letter.fields["reason"] == f"malformed message: {delivery.problem}"
    assert letter.fields["problem"] == delivery.problem
    assert letter.fields["deliveries"] == "1"
    assert letter.fields["v"] == "1"
    assert json.loads(letter.fields["body"]) == delivery.body
    assert pending(server, transport.streams[0]) == {}  # the original is acknowledged


def test_a_poison_wakeup_is_dead_lettered_with_its_body_and_delivery_count(
    connect: Connect, server: RedisServer
) -> None:
    transport = connect(streams=2, claim_idle=0.05, claim_every=0, max_deliveries=3)
    transport.publish([wakeup("inv-poison")])
    delivery = receive_all(transport, "worker-1", 1)[0]
    for n in (2, 3):  # each worker that takes it dies
        time.sleep(0.1)
        delivery = transport.receive(f"worker-{n}", count=1, block=0)[0]
    assert delivery.deliveries == transport.max_deliveries == 3

    letter_id = transport.dead_letter(delivery, "failed 3 times: ZeroDivisionError")

    (letter,) = server.entries(transport.dead_letter_stream, letter_id, letter_id)
    assert letter.fields["deliveries"] == "3"
    assert letter.fields["reason"] == "failed 3 times: ZeroDivisionError"
    assert letter.fields["problem"] == ""
    assert letter.fields["body"] == (
        '{"event_id": "inv-poison/1", "execution_id": "inv-poison", "tenant": "acme", "v": "1"}'
    )
    time.sleep(0.1)
    assert transport.receive("worker-4", count=1, block=0) == []  # acknowledged: not claimed


def test_ack_and_dead_letter_refuse_ids_of_other_streams(connect: Connect) -> None:
    transport = connect(streams=2)
    stranger = Delivery(id="elsewhere:wakeups:0|1-0", wakeup=None)
    with pytest.raises(ValueError, match="is not the id of a delivery of this transport"):
        transport.ack([stranger])
    with pytest.raises(ValueError, match="is not the id of a delivery of this transport"):
        transport.dead_letter(stranger, "no")


def test_listen_returns_at_once(connect: Connect) -> None:
    transport = connect()
    started = time.monotonic()
    transport.listen(lambda: None, threading.Event())
    assert time.monotonic() - started < 0.1


def test_the_maxlen_cap_bounds_each_stream(connect: Connect, server: RedisServer) -> None:
    transport = connect(streams=1, maxlen=100)
    for _ in range(10):
        transport.publish([wakeup(f"inv-{n}") for n in range(100)])
    assert 100 <= server.length(transport.streams[0]) < 300  # approximate: whole nodes go


# --------------------------------------------------------------------------------------------
# A Redis that restarts empty, or is down
# --------------------------------------------------------------------------------------------


def test_a_redis_restarted_without_persistence_loses_the_group_which_is_created_again(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RedisTransport(own_server.url(streams=2, claim_every=0))
    try:
        transport.publish([wakeup("inv-1")])
        assert len(receive_all(transport, "worker-a", 1)) == 1

        own_server.restart()  # empty: no stream, no group (NOGROUP on the next read)
        with caplog.at_level(logging.WARNING, logger="ledgerflow_redis"):
            assert transport.receive("worker-a", count=1, block=0) == []
        assert "lost consumer group ledgerflow" in caplog.text

        assert transport.group_resets == 1

        transport.publish([wakeup("inv-2")])
        (delivery,) = receive_all(transport, "worker-a", 1)
        assert delivery.wakeup == wakeup("inv-2")
        transport.ack([delivery])
        assert sum(transport.trim().values()) == 1  # the trim script was loaded again

        own_server.restart()  # and this time a publish comes before the next read
        transport.publish([wakeup("inv-3")])
        (delivery,) = receive_all(transport, "worker-a", 1)  # the new group starts at 0
        assert delivery.wakeup == wakeup("inv-3")
        assert transport.group_resets == 2
    finally:
        transport.close()


def test_publish_while_redis_is_down_raises_a_clear_error_and_works_when_it_is_back(
    own_server: RedisServer,
) -> None:
    transport = RedisTransport(own_server.url(streams=2, retries=1))
    url = transport.url
    try:
        transport.publish([wakeup("inv-1")])
        own_server.stop()

        started = time.monotonic()
        with pytest.raises(RedisUnavailableError) as caught:
            transport.publish([wakeup("inv-2"), wakeup("inv-3")])
        assert time.monotonic() - started < 2
        assert str(caught.value).startswith(
            f"Redis at {url} cannot be reached (publishing 2 wake-ups): "
        )
        assert isinstance(caught.value.__cause__, redis.ConnectionError)
        with pytest.raises(RedisUnavailableError, match=r"cannot be reached \(receiving\)"):
            transport.receive("worker-a", count=1, block=0)
        with pytest.raises(RedisUnavailableError, match=r"\(acknowledging 1 message\)"):
            transport.ack([Delivery(id=f"{transport.streams[0]}|1-0", wakeup=None)])
        with pytest.raises(RedisUnavailableError, match=r"\(trimming the streams\)"):
            transport.trim()

        own_server.start()
        transport.publish([wakeup("inv-4")])
        assert [d.wakeup for d in receive_all(transport, "worker-a", 1)] == [wakeup("inv-4")]
    finally:
        transport.close()


def test_the_password_is_not_in_the_error(own_server: RedisServer) -> None:
    transport = RedisTransport(own_server.url(retries=0).replace("redis://", "redis://:hunter2@"))
    try:
        own_server.stop()
        with pytest.raises(RedisUnavailableError) as caught:
            transport.publish([wakeup("inv-1")])
        assert "hunter2" not in str(caught.value)
        assert ":***@" in str(caught.value)
    finally:
        transport.close()
