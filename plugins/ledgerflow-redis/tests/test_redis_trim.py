"""``trim()`` removes what every consumer group has acknowledged and nothing else: not an
entry pending in any group, not one a group has yet to read, not a stream no group reads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledgerflow.transports import Delivery, Wakeup

from ledgerflow_redis import RedisTransport
from ledgerflow_redis.testing import RedisServer


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


def wakeup(execution: str, event: int = 1) -> Wakeup:
    return Wakeup(execution_id=execution, tenant="acme", event_id=f"{execution}/{event}")


def entry_ids(server: RedisServer, stream: str) -> list[str]:
    return [entry.id for entry in server.entries(stream)]


def drain(transport: RedisTransport, consumer: str) -> list[Delivery]:
    got: list[Delivery] = []
    while batch := transport.receive(consumer, count=50, block=0):
        got += batch
    return got


def test_acknowledged_entries_before_the_oldest_pending_one_are_removed(
    server: RedisServer,
) -> None:
    transport = RedisTransport(server.url(streams=1))
    try:
        transport.publish([wakeup(f"inv-{n}") for n in range(6)])
        d = drain(transport, "worker-a")
        transport.ack([d[0], d[1], d[3]])

        assert transport.trim() == {"ledgerflow:wakeups:0": 2}

        # the oldest pending entry (d[2]) and all after it stay, d[3] acknowledged or not
        assert entry_ids(server, transport.streams[0]) == [x.id.split("|")[1] for x in d[2:]]
    finally:
        transport.close()


def test_a_group_with_nothing_pending_keeps_only_what_it_has_not_read(server: RedisServer) -> None:
    transport = RedisTransport(server.url(streams=1))
    try:
        transport.publish([wakeup(f"inv-{n}") for n in range(4)])
        transport.ack(transport.receive("worker-a", count=3, block=0))

        assert transport.trim() == {"ledgerflow:wakeups:0": 3}
        assert len(entry_ids(server, transport.streams[0])) == 1
        (last,) = transport.receive("worker-a", count=10, block=0)
        assert last.wakeup == wakeup("inv-3")
        transport.ack([last])
        assert transport.trim() == {"ledgerflow:wakeups:0": 1}
        assert server.length(transport.streams[0]) == 0

        transport.publish([wakeup("inv-4")])  # the emptied stream and its group go on
        (fresh,) = transport.receive("worker-a", count=10, block=0)
        assert fresh.wakeup == wakeup("inv-4")
    finally:
        transport.close()


def test_a_stream_no_group_reads_yet_is_left_whole(server: RedisServer) -> None:
    transport = RedisTransport(server.url(streams=2))
    try:
        transport.publish([wakeup(f"inv-{n}") for n in range(10)])
        assert transport.trim() == dict.fromkeys(transport.streams, 0)
        assert sum(server.length(s) for s in transport.streams) == 10
    finally:
        transport.close()


def test_the_slowest_group_decides(server: RedisServer) -> None:
    fast = RedisTransport(server.url(streams=1, group="fast"))
    slow = RedisTransport(server.url(streams=1, group="slow"))
    try:
        fast.publish([wakeup(f"inv-{n}") for n in range(6)])
        first = slow.receive("slow-1", count=1, block=0)  # slow read one, and holds it
        fast.ack(drain(fast, "fast-1"))

        assert fast.trim() == {"ledgerflow:wakeups:0": 0}  # slow has one pending, the first
        assert server.length(fast.streams[0]) == 6
        slow.ack(slow.receive("slow-1", count=2, block=0))  # acknowledges the 2nd and 3rd
        assert slow.trim() == {"ledgerflow:wakeups:0": 0}  # the 1st is still pending
        slow.ack(drain(slow, "slow-1"))
        assert slow.trim() == {"ledgerflow:wakeups:0": 0}  # still the 1st
        slow.ack(first)
        assert slow.trim() == {"ledgerflow:wakeups:0": 6}
    finally:
        fast.close()
        slow.close()


def test_trimming_a_stream_redis_lost_is_no_error(server: RedisServer) -> None:
    transport = RedisTransport(server.url(streams=2))
    try:
        assert transport.trim() == dict.fromkeys(transport.streams, 0)
    finally:
        transport.close()


publish = st.tuples(st.just("publish"), st.integers(0, 5), st.integers(1, 3))
receive = st.tuples(st.just("receive"), st.integers(0, 1), st.integers(1, 4))
ack = st.tuples(st.just("ack"), st.integers(0, 1), st.integers(0, 50))
trim = st.tuples(st.just("trim"), st.just(0), st.just(0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(publish, receive, ack, trim), min_size=1, max_size=40))
def test_trim_never_removes_an_entry_any_group_still_needs(
    redis_server: RedisServer, operations: list[tuple[str, int, int]]
) -> None:
    """Random interleavings of publish, receive, ack and trim over two groups: afterwards,
    every entry a group received and has not acknowledged is still in its stream, and each
    group still receives every entry it had not read."""
    redis_server.flush()
    groups = [
        RedisTransport(redis_server.url(streams=2, group=name)) for name in ("billing", "audit")
    ]
    published = 0
    unacked: list[list[Delivery]] = [[], []]
    seen: list[set[str]] = [set(), set()]
    try:
        for group in groups:
            group.receive("warm-up", count=1, block=0)  # both groups exist from the start
        for operation, which, n in operations:
            if operation == "publish":
                events = [wakeup(f"inv-{which}", published + k) for k in range(n)]
                groups[0].publish(events)
                published += n
            elif operation == "receive":
                got = groups[which].receive(f"{which}-consumer", count=n, block=0)
                unacked[which] += got
                seen[which] |= {d.id for d in got}
            elif operation == "ack" and unacked[which]:
                done = unacked[which].pop(n % len(unacked[which]))
                groups[which].ack([done])
            elif operation == "trim":
                groups[0].trim()

        for which, group in enumerate(groups):
            for delivery in unacked[which]:
                stream, entry_id = delivery.id.split("|")
                assert redis_server.entries(stream, entry_id, entry_id), f"{delivery.id} trimmed"
            for stream in group.streams:
                for entry_id in redis_server.pending(stream, group.settings.group):
                    assert redis_server.entries(stream, entry_id, entry_id), f"{entry_id} trimmed"
        for which, group in enumerate(groups):
            rest = drain(group, f"{which}-consumer")
            assert len(seen[which] | {d.id for d in rest}) == published
            group.ack([*unacked[which], *rest])
        groups[0].trim()
        assert sum(redis_server.length(s) for s in groups[0].streams) == 0  # all acked: all gone
    finally:
        for group in groups:
            group.close()
