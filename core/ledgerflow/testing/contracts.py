"""Contract test suites: what every backend must do, as pytest tests a backend's own test
module inherits.

:class:`StoreContract` holds the promises the engine relies on from a store (the methods of
:class:`~ledgerflow.store.sql.SQLStore` it calls): appending records with optimistic
concurrency on ``(execution_id, seq)``, reading them back in order and by tenant, event
statuses, projections and snapshots, leases with fencing tokens, idempotent action results,
and registered definitions. Subclass it in a module of your tests, name the subclass
``Test…``, and implement :meth:`StoreContract.make_store`::

    class TestMyStore(StoreContract):
        def make_store(self, clock: Clock) -> SQLStore:
            store = MyStore(MY_TEST_URL, clock=clock)
            store.upgrade()
            return store

Every test gets a fresh store from it (empty, with its schema) and a
:class:`~ledgerflow.testing.Clock` it can move. ledgerflow runs this suite against SQLite and
PostgreSQL.


:class:`BrokerTransportContract` is the contract a plugin author's broker transport (a
:class:`~ledgerflow.transports.BrokerTransport`, such as ``ledgerflow-redis``'s) must pass,
through its public protocol only: a published wake-up goes to one consumer of the group and
not again once acknowledged; a delivery a stopped consumer never acknowledged goes to another
consumer after the transport's claim time, its ``deliveries`` counted up; ``dead_letter``
acknowledges and returns an id; one execution's wake-ups arrive in publish order; an empty
``receive`` returns ``[]`` after about ``block`` seconds; ``publish([])`` does nothing; and
``close()`` may be called twice. Implement :meth:`BrokerTransportContract.make_transport` and
set :attr:`BrokerTransportContract.claim_wait` a little above your transport's claim time::

    class TestMyTransport(BrokerTransportContract):
        claim_wait = 0.3

        def make_transport(self) -> BrokerTransport:
            return MyTransport("mybroker://localhost/?claim_idle=0.2")
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import Callable, Iterator

import attrs
import pytest
import sqlalchemy as sa

from ledgerflow.errors import LeaseLostError
from ledgerflow.model import (
    EventReceived,
    ExecutionStarted,
    Record,
    State,
    Status,
    StepSucceeded,
    TransitionApplied,
)
from ledgerflow.store.schema import outbox, timers
from ledgerflow.store.sql import ALL_TENANTS, SQLStore, tenant_scope
from ledgerflow.testing.harness import Clock
from ledgerflow.transports import BrokerTransport, Delivery, Wakeup

__all__ = ["BrokerTransportContract", "StoreContract"]


def _state(seq: int, name: str = "draft", **context: object) -> State:
    return State(
        workflow="Contract",
        version=1,
        name=name,
        context=dict(context),
        status=Status.ACTIVE,
        seq=seq,
        decided_seq=0,
    )


class StoreContract(abc.ABC):
    """The store contract: subclass it as ``Test…`` and implement :meth:`make_store`."""

    tenant = "contract-tenant"
    other_tenant = "contract-other"

    @abc.abstractmethod
    def make_store(self, clock: Clock) -> SQLStore:
        """A fresh, empty store with its schema in place, using ``clock`` for every time it
        writes. Called once per test; the store is closed after it."""

    # ----------------------------------------------------------------------------------------

    @pytest.fixture
    def clock(self) -> Clock:
        """The clock of the test's store."""
        return Clock()

    @pytest.fixture
    def store(self, clock: Clock) -> Iterator[SQLStore]:
        """The store under test, used with the database's own tenant wall (row-level security)
        lifted: the contract checks that the store's queries scope every read by tenant."""
        store = self.make_store(clock)
        try:
            with tenant_scope(ALL_TENANTS):
                yield store
        finally:
            store.close()

    def new_execution(self, store: SQLStore, tenant: str | None = None) -> str:
        """Create an execution with its first record; returns its id."""
        execution_id = f"c-{uuid.uuid4().hex[:16]}"
        started = ExecutionStarted(seq=1, workflow="Contract", version=1, context={"n": 1})
        with store.write() as conn:
            store.insert_execution(conn, execution_id, tenant or self.tenant, _state(1), started)
        return execution_id

    def append(self, store: SQLStore, execution_id: str, *records: Record) -> list[str]:
        """Append ``records`` in one transaction; returns their event ids."""
        with store.write() as conn:
            return store.insert_records(conn, execution_id, self.tenant, list(records))

    def ledger(self, store: SQLStore, execution_id: str, tenant: str | None = None) -> list[Record]:
        """The execution's records as the store reads them."""
        with store.read() as conn:
            found = store.records(conn, execution_id, tenant or self.tenant)
        return [s.record for s in found]

    # ----------------------------------------------------------------------------------------
    # The ledger
    # ----------------------------------------------------------------------------------------

    def test_the_schema_is_in_place(self, store: SQLStore) -> None:
        store.check_schema()
        assert store.revision() is not None

    def test_records_read_back_as_written_in_seq_order(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        written: list[Record] = [
            EventReceived(seq=2, name="Go", payload={"a": [1, 2.5, "é", None]}, role="clerk"),
            TransitionApplied(
                seq=3, event_seq=2, transition="go", source="draft", target="done", context={"k": 1}
            ),
            StepSucceeded(seq=4, event_seq=2, step_id="s", result={"ok": True}, attempts=2),
        ]
        self.append(store, x, *written)
        ledger = self.ledger(store, x)
        assert ledger[0] == ExecutionStarted(
            seq=1, workflow="Contract", version=1, context={"n": 1}
        )
        assert ledger[1:] == written
        with store.read() as conn:
            assert store.last_seq(conn, x) == 4
            assert [s.record.seq for s in store.records(conn, x, self.tenant, after=2)] == [3, 4]

    def test_a_seq_is_taken_once(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        self.append(store, x, EventReceived(seq=2, name="Go"))
        with pytest.raises(sa.exc.IntegrityError):
            self.append(store, x, EventReceived(seq=2, name="Again"))
        assert [r.seq for r in self.ledger(store, x)] == [1, 2]
        assert self.ledger(store, x)[1] == EventReceived(seq=2, name="Go")

    def test_a_failed_append_writes_nothing(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        before = store.row_counts()
        with pytest.raises(sa.exc.IntegrityError):
            self.append(store, x, EventReceived(seq=3, name="Fine"), EventReceived(seq=1, name="X"))
        assert store.row_counts() == before

    def test_an_appended_event_is_pending_and_keeps_its_client_key(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        with store.write() as conn:
            (event_id,) = store.insert_records(
                conn, x, self.tenant, [EventReceived(seq=2, name="Go")], client_key="k-1"
            )
        with store.read() as conn:
            assert store.event_by_key(conn, x, "k-1") == event_id
            assert store.event_by_key(conn, x, "k-2") is None
            row = store.event_row(conn, event_id, self.tenant)
        assert (row.status, row.name, row.seq) == ("pending", "Go", 2)
        assert store.pending_executions(10) == [(x, self.tenant)]
        assert store.has_work()

    def test_an_event_outcome_is_recorded(self, store: SQLStore, clock: Clock) -> None:
        x = self.new_execution(store)
        (event_id,) = self.append(store, x, EventReceived(seq=2, name="Go"))
        clock.advance(5)
        with store.write() as conn:
            store.set_event_outcome(
                conn, x, 2, status="rejected", outcome="no_transition", detail="nowhere to go"
            )
        with store.read() as conn:
            row = store.event_row(conn, event_id, self.tenant)
        assert (row.status, row.outcome, row.detail) == (
            "rejected",
            "no_transition",
            "nowhere to go",
        )
        assert row.processed_at == clock.now
        assert store.pending_executions(10) == []

    def test_finishing_decides_saves_hands_wakeups_over_and_gives_the_lease_up(
        self, store: SQLStore, clock: Clock
    ) -> None:
        x = self.new_execution(store)
        go, again = self.append(
            store, x, EventReceived(seq=2, name="Go"), EventReceived(seq=3, name="Again")
        )
        token = store.take_lease(x, "w1", 30)
        assert token is not None
        done = attrs.evolve(_state(4, name="done", n=2), decided_seq=2)
        clock.advance(5)
        with store.write() as conn:
            store.fence(conn, x, "w1", token, 30)
            store.finish(
                conn,
                x,
                outcomes=[(2, "processed", "applied", "done")],
                projection=done,
                handled=True,
                release=("w1", token),
            )

        def wakeups() -> dict[str, float | None]:
            with store.read() as conn:
                rows = conn.execute(
                    sa.select(outbox.c.event_id, outbox.c.published_at).where(
                        outbox.c.execution_id == x
                    )
                )
                return {r.event_id: r.published_at for r in rows}

        with store.read() as conn:
            decided = store.event_row(conn, go, self.tenant)
            waiting = store.event_row(conn, again, self.tenant)
            row = store.execution_row(conn, x, self.tenant)
        assert (decided.status, decided.outcome, decided.detail) == ("processed", "applied", "done")
        assert decided.processed_at == clock.now
        assert waiting.status == "pending"
        assert (row.state, row.context, row.projection_seq, row.decided_seq) == (
            "done",
            {"n": 2},
            4,
            2,
        )
        # the wake-up of the event decided here is handled; the one still pending is not
        assert wakeups() == {go: clock.now, again: None}
        # the lease was given up: anyone takes it at once
        taken = store.take_lease(x, "w2", 30)
        assert taken is not None
        with store.write() as conn:
            store.fence(conn, x, "w2", taken, 30)
            store.finish(conn, x, outcomes=[(3, "rejected", "no_transition", None)], handled=True)
        assert wakeups() == {go: clock.now, again: clock.now}
        assert store.take_lease(x, "w3", 30) is None  # not given up this time

    def test_finishing_applies_outcomes_naming_one_event_twice_in_order(
        self, store: SQLStore
    ) -> None:
        x = self.new_execution(store)
        (go,) = self.append(store, x, EventReceived(seq=2, name="Go"))
        token = store.take_lease(x, "w1", 30)
        assert token is not None
        with store.write() as conn:
            store.fence(conn, x, "w1", token, 30)
            store.finish(
                conn,
                x,
                outcomes=[(2, "failed", "failed", "first"), (2, "processed", "applied", "last")],
                handled=True,
            )
        with store.read() as conn:
            row = store.event_row(conn, go, self.tenant)
        assert (row.status, row.outcome, row.detail) == ("processed", "applied", "last")

    def test_finishing_cancels_the_timers_of_states_or_all_of_them(
        self, store: SQLStore, clock: Clock
    ) -> None:
        x = self.new_execution(store)
        token = store.take_lease(x, "w1", 30)
        assert token is not None
        with store.write() as conn:
            (state_timer,) = store.arm_timers(conn, x, self.tenant, 1, [("Remind", 60.0)])
            store.schedule_timer(conn, "step-timer", x, self.tenant, "Later", clock.now + 60, {})

        def armed() -> set[str]:
            with store.read() as conn:
                return set(
                    conn.execute(
                        sa.select(timers.c.id).where(
                            timers.c.execution_id == x, timers.c.state == "armed"
                        )
                    ).scalars()
                )

        assert armed() == {state_timer, "step-timer"}
        with store.write() as conn:
            store.fence(conn, x, "w1", token, 30)
            store.finish(conn, x, cancel_timers=False)  # a state left: its timers go
        assert armed() == {"step-timer"}
        with store.write() as conn:
            store.fence(conn, x, "w1", token, 30)
            store.finish(conn, x, projection=_state(2, name="done"), cancel_timers=True)
        assert armed() == set()  # the execution completed: every timer goes

    # ----------------------------------------------------------------------------------------
    # Tenants
    # ----------------------------------------------------------------------------------------

    def test_another_tenant_sees_nothing(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        (event_id,) = self.append(store, x, EventReceived(seq=2, name="Go"))
        with store.read() as conn:
            assert store.execution_row(conn, x, self.other_tenant) is None
            assert store.records(conn, x, self.other_tenant) == []
            assert store.event_row(conn, event_id, self.other_tenant) is None
            assert store.execution_row(conn, x, self.tenant) is not None
        assert store.snapshot_states(x, self.other_tenant) == []

    # ----------------------------------------------------------------------------------------
    # Projections and snapshots
    # ----------------------------------------------------------------------------------------

    def test_the_projection_is_what_was_saved(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        saved = State(
            workflow="Contract",
            version=1,
            name="done",
            context={"total": 12.5, "who": ["a", "b"]},
            status=Status.COMPLETED,
            seq=7,
            decided_seq=5,
        )
        with store.write() as conn:
            store.save_projection(conn, x, saved)
        with store.read() as conn:
            row = store.execution_row(conn, x, self.tenant)
        assert (row.state, row.context, row.status) == ("done", saved.context, "completed")
        assert (row.projection_seq, row.decided_seq) == (7, 5)

    def test_snapshots_come_back_oldest_first_and_the_latest_is_the_newest(
        self, store: SQLStore
    ) -> None:
        x = self.new_execution(store)
        first, second = _state(4, "a", n=1), _state(8, "b", n=2)
        with store.write() as conn:
            store.save_snapshot(conn, x, self.tenant, first)
            store.save_snapshot(conn, x, self.tenant, second)
        assert store.snapshot_states(x, self.tenant) == [first, second]
        with store.read() as conn:
            assert store.latest_snapshot(conn, x, self.tenant) == second

    # ----------------------------------------------------------------------------------------
    # Leases and fencing
    # ----------------------------------------------------------------------------------------

    def test_a_lease_is_held_by_one_owner_until_it_expires(
        self, store: SQLStore, clock: Clock
    ) -> None:
        x = self.new_execution(store)
        token = store.take_lease(x, "w1", 30)
        assert token is not None
        assert store.take_lease(x, "w2", 30) is None
        assert store.take_lease(x, "w1", 30) is None  # not even its own owner, twice
        clock.advance(31)
        taken = store.take_lease(x, "w2", 30)
        assert taken is not None
        assert taken > token

    def test_a_fenced_write_of_a_superseded_owner_is_refused(
        self, store: SQLStore, clock: Clock
    ) -> None:
        x = self.new_execution(store)
        old = store.take_lease(x, "w1", 30)
        assert old is not None
        clock.advance(31)
        new = store.take_lease(x, "w2", 30)
        assert new is not None

        def late_write() -> None:
            with store.write() as conn:
                store.fence(conn, x, "w1", old, 30)
                store.insert_records(conn, x, self.tenant, [EventReceived(seq=2, name="Late")])

        with pytest.raises(LeaseLostError):
            late_write()
        assert [r.seq for r in self.ledger(store, x)] == [1]
        assert store.renew_lease(x, "w2", new, 30)
        assert not store.renew_lease(x, "w1", old, 30)

    def test_a_fence_renews_the_lease(self, store: SQLStore, clock: Clock) -> None:
        x = self.new_execution(store)
        token = store.take_lease(x, "w1", 30)
        assert token is not None
        clock.advance(20)
        with store.write() as conn:
            store.fence(conn, x, "w1", token, 30)
        clock.advance(20)  # 40 s after taking it, 20 after the fence: still held
        assert store.take_lease(x, "w2", 30) is None

    def test_a_released_lease_is_free_at_once_and_tokens_keep_counting(
        self, store: SQLStore
    ) -> None:
        x = self.new_execution(store)
        first = store.take_lease(x, "w1", 30)
        assert first is not None
        store.release_lease(x, "w1", first)
        second = store.take_lease(x, "w2", 30)
        assert second is not None
        assert second > first

    def test_a_leased_execution_is_not_offered_to_the_sweep(
        self, store: SQLStore, clock: Clock
    ) -> None:
        x = self.new_execution(store)
        self.append(store, x, EventReceived(seq=2, name="Go"))
        assert store.take_lease(x, "w1", 30) is not None
        assert store.pending_executions(10) == []
        clock.advance(31)
        assert store.pending_executions(10) == [(x, self.tenant)]

    # ----------------------------------------------------------------------------------------
    # Action results
    # ----------------------------------------------------------------------------------------

    def record_result(self, store: SQLStore, execution_id: str, key: str, result: object) -> None:
        """Record ``result`` under ``key`` for step ``s1`` of event ``e1``."""
        with store.write() as conn:
            store.insert_action_result(
                conn,
                key=key,
                tenant=self.tenant,
                execution_id=execution_id,
                event_id="e1",
                step_id="s1",
                action="contract.act",
                result=result,
                attempts=1,
            )

    def test_an_action_result_is_recorded_once_per_key(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        key = f"{x}:e1:s1"
        with store.read() as conn:
            assert store.action_result(conn, key) == (False, None)
        self.record_result(store, x, key, {"n": [1, "two"]})
        with pytest.raises(sa.exc.IntegrityError):
            self.record_result(store, x, key, "second")
        with store.read() as conn:
            assert store.action_result(conn, key) == (True, {"n": [1, "two"]})

    def test_a_null_result_is_recorded_as_a_result(self, store: SQLStore) -> None:
        x = self.new_execution(store)
        self.record_result(store, x, f"{x}:e1:s1", None)
        with store.read() as conn:
            assert store.action_result(conn, f"{x}:e1:s1") == (True, None)

    # ----------------------------------------------------------------------------------------
    # Definitions
    # ----------------------------------------------------------------------------------------

    def test_definitions_are_kept_by_name_and_version(self, store: SQLStore) -> None:
        name = f"Contract{uuid.uuid4().hex[:8]}"
        with store.write() as conn:
            assert store.definition_hash(conn, name, 1) is None
            store.insert_definition(conn, name, 1, {"name": name, "version": 1}, "h1")
            store.insert_definition(conn, name, 2, {"name": name, "version": 2}, "h2")
        with store.read() as conn:
            assert store.definition_hash(conn, name, 2) == "h2"
        assert store.latest_version(name) == 2
        assert store.definition_body(name, 1) == {"name": name, "version": 1}
        assert store.definition_body(name, 3) is None
        assert [(n, v, h) for n, v, h, _ in store.list_definitions() if n == name] == [
            (name, 1, "h1"),
            (name, 2, "h2"),
        ]
        with pytest.raises(sa.exc.IntegrityError), store.write() as conn:
            store.insert_definition(conn, name, 1, {"changed": True}, "h3")

    def test_an_execution_of_a_version_no_longer_latest_is_not_created_when_asked(
        self, store: SQLStore
    ) -> None:
        name = f"Contract{uuid.uuid4().hex[:8]}"
        with store.write() as conn:
            store.insert_definition(conn, name, 1, {"name": name, "version": 1}, "h1")
        state = attrs.evolve(_state(1), workflow=name)
        started = ExecutionStarted(seq=1, workflow=name, version=1, context={})
        event = EventReceived(seq=2, name="go", payload={})
        ids = [f"c-{uuid.uuid4().hex[:16]}" for _ in range(3)]
        with store.write() as conn:
            assert store.insert_execution(
                conn, ids[0], self.tenant, state, started, then=[event], only_if_latest=True
            )
            store.insert_definition(conn, name, 2, {"name": name, "version": 2}, "h2")
        with store.write() as conn:
            refused = store.insert_execution(
                conn, ids[1], self.tenant, state, started, then=[event], only_if_latest=True
            )
            assert refused is None
            # without asking, any version is created
            assert store.insert_execution(conn, ids[2], self.tenant, state, started) == []
        assert self.ledger(store, ids[0]) == [started, event]
        assert self.ledger(store, ids[1]) == []
        with store.read() as conn:
            assert store.execution_row(conn, ids[1], self.tenant) is None
            assert store.execution_row(conn, ids[2], self.tenant) is not None


class BrokerTransportContract(abc.ABC):
    """The broker transport contract: subclass it as ``Test…``, implement
    :meth:`make_transport` and set :attr:`claim_wait`.

    Every transport a test makes shares one broker, empty at the start of the test, and one
    consumer group: several transports of a test are several worker processes of a pool.
    """

    claim_wait: float = 1.0
    """Seconds the tests sleep for a delivery left unacknowledged to become another
    consumer's: a little more than the transport's claim timeout. Give the transport under
    test a short one (a fraction of a second) and this a little more."""

    block: float = 0.3
    """The ``block`` of the tests' receives that expect nothing."""

    patience: float = 5.0
    """Seconds the tests wait at most for messages they expect."""

    @abc.abstractmethod
    def make_transport(self) -> BrokerTransport:
        """A transport on the test's broker (empty when the test starts: no messages, no
        pending deliveries), in the test's consumer group, its claim timeout a little less
        than :attr:`claim_wait`. Called one or more times per test; each transport is closed
        after the test. Wake-ups published before the group's first ``receive`` are to be
        received too."""

    # ----------------------------------------------------------------------------------------

    @pytest.fixture
    def connect(self) -> Iterator[Callable[[], BrokerTransport]]:
        """Makes transports (:meth:`make_transport`), closed after the test."""
        made: list[BrokerTransport] = []

        def build() -> BrokerTransport:
            transport = self.make_transport()
            made.append(transport)
            return transport

        yield build
        for transport in made:
            transport.close()

    @pytest.fixture
    def transport(self, connect: Callable[[], BrokerTransport]) -> BrokerTransport:
        """The transport under test."""
        return connect()

    @staticmethod
    def wakeup(execution_id: str | None = None, n: int = 1) -> Wakeup:
        """Wake-up ``n`` of ``execution_id`` (a new execution's by default)."""
        return Wakeup(
            execution_id=execution_id or f"c-{uuid.uuid4().hex[:16]}",
            tenant="contract-tenant",
            event_id=f"e-{n}-{uuid.uuid4().hex[:8]}",
        )

    def receive_all(
        self, transport: BrokerTransport, consumer: str, expected: int
    ) -> list[Delivery]:
        """Receive for ``consumer`` until ``expected`` messages came (or :attr:`patience` ran
        out), in the order they came."""
        got: list[Delivery] = []
        deadline = time.monotonic() + self.patience
        while len(got) < expected and time.monotonic() < deadline:
            got += transport.receive(consumer, count=expected - len(got), block=0.2)
        return got

    # ----------------------------------------------------------------------------------------

    def test_it_is_a_broker_transport(self, transport: BrokerTransport) -> None:
        assert isinstance(transport, BrokerTransport)
        assert transport.max_deliveries >= 1

    def test_a_wakeup_goes_to_one_consumer_and_not_again_after_ack(
        self, transport: BrokerTransport
    ) -> None:
        sent = self.wakeup()
        transport.publish([sent])
        [delivery] = self.receive_all(transport, "worker-a", 1)
        assert delivery.wakeup == sent
        assert delivery.deliveries == 1
        assert delivery.problem is None
        # at once, well within the claim time: nobody else gets it meanwhile
        assert transport.receive("worker-b", count=10, block=0) == []
        assert transport.receive("worker-a", count=10, block=0) == []
        transport.ack([delivery])
        time.sleep(self.claim_wait)
        assert transport.receive("worker-b", count=10, block=self.block) == []
        assert transport.receive("worker-a", count=10, block=self.block) == []

    def test_a_stopped_consumers_unacked_delivery_goes_to_another(
        self, connect: Callable[[], BrokerTransport]
    ) -> None:
        stopping, surviving = connect(), connect()
        sent = self.wakeup()
        surviving.publish([sent])
        [first] = self.receive_all(stopping, "worker-a", 1)
        stopping.close()  # worker-a stops without acknowledging
        time.sleep(self.claim_wait)
        [again] = self.receive_all(surviving, "worker-b", 1)
        assert (again.id, again.wakeup) == (first.id, sent)
        assert again.deliveries == first.deliveries + 1
        surviving.ack([again])
        time.sleep(self.claim_wait)
        assert surviving.receive("worker-c", count=10, block=self.block) == []

    def test_a_dead_letter_is_acknowledged_and_has_an_id(self, transport: BrokerTransport) -> None:
        transport.publish([self.wakeup()])
        [delivery] = self.receive_all(transport, "worker-a", 1)
        letter = transport.dead_letter(delivery, "contract: given up")
        assert isinstance(letter, str)
        assert letter
        time.sleep(self.claim_wait)
        assert transport.receive("worker-b", count=10, block=self.block) == []
        assert transport.receive("worker-a", count=10, block=self.block) == []

    def test_one_executions_wakeups_arrive_in_publish_order(
        self, transport: BrokerTransport
    ) -> None:
        x, y = f"c-x-{uuid.uuid4().hex[:8]}", f"c-y-{uuid.uuid4().hex[:8]}"
        first = [w for n in range(1, 4) for w in (self.wakeup(x, n), self.wakeup(y, n))]
        later = [self.wakeup(x, 4), self.wakeup(x, 5), self.wakeup(y, 4)]
        transport.publish(first)
        transport.publish(later)
        got = self.receive_all(transport, "worker-a", len(first) + len(later))
        for execution_id in (x, y):
            sent = [w for w in first + later if w.execution_id == execution_id]
            came = [d.wakeup for d in got if d.wakeup and d.wakeup.execution_id == execution_id]
            assert came == sent
        transport.ack(got)

    def test_receive_with_nothing_published_returns_nothing_within_block(
        self, transport: BrokerTransport
    ) -> None:
        started = time.monotonic()
        assert transport.receive("worker-a", count=10, block=self.block) == []
        assert time.monotonic() - started < self.block + 1.0

    def test_publishing_nothing_does_nothing(self, transport: BrokerTransport) -> None:
        transport.publish([])
        assert transport.receive("worker-a", count=10, block=self.block) == []

    def test_close_may_be_called_twice(self, connect: Callable[[], BrokerTransport]) -> None:
        transport = connect()
        transport.publish([self.wakeup()])
        transport.receive("worker-a", count=10, block=self.block)
        transport.close()
        transport.close()
