"""The engine over a real store: appends, processing, leases, versions, bad input."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

import ledgerflow
from ledgerflow.engine import Engine, Lease
from ledgerflow.errors import (
    DefinitionConflictError,
    DefinitionError,
    EventNotFoundError,
    ExecutionNotFoundError,
    InvalidEventError,
    InvalidInputError,
    LeaseLostError,
    SchemaError,
    WorkflowNotFoundError,
)
from ledgerflow.store import ALL_TENANTS
from ledgerflow.store.sql import SQLStore
from ledgerflow.worker import Worker

TENANT = "acme"
INVOICE_PAYLOAD = {"invoice": {"id": "INV-1", "total": 120, "customer_id": "C-1"}}


def drain(engine: Engine) -> int:
    return Worker(engine, poll_interval=0.01).run_once()


def test_an_invoice_goes_from_draft_to_approved(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    first = engine.enqueue_event(
        execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=INVOICE_PAYLOAD
    )
    assert engine.event_status(first, tenant=TENANT).status == "pending"
    assert drain(engine) == 1
    assert engine.get_execution(execution_id, tenant=TENANT).state == "pending_approval"
    second = engine.enqueue_event(
        execution_id,
        "ApproveInvoice",
        tenant=TENANT,
        role="manager",
        payload={"approved_by": "ann"},
    )
    assert drain(engine) == 1
    execution = engine.get_execution(execution_id, tenant=TENANT)
    assert (execution.state, execution.status) == ("approved", ledgerflow.Status.COMPLETED)
    assert execution.context["approved_by"] == "ann"
    info = engine.event_status(second, tenant=TENANT)
    assert (info.status, info.outcome, info.detail) == ("processed", "applied", "approved")
    history = engine.history(execution_id, tenant=TENANT)
    assert [h.seq for h in history] == list(range(1, len(history) + 1))
    assert [h.kind for h in history][:4] == [
        "execution_started",
        "event_received",
        "transition_applied",
        "step_succeeded",
    ]
    replayed = engine.replay(execution_id, tenant=TENANT)
    assert (replayed.name, replayed.status, dict(replayed.context), replayed.seq) == (
        execution.state,
        execution.status,
        dict(execution.context),
        execution.seq,
    )


def test_a_rejected_event_is_recorded_with_its_reason(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    engine.enqueue_event(
        execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=INVOICE_PAYLOAD
    )
    refused = engine.enqueue_event(
        execution_id, "ApproveInvoice", tenant=TENANT, role="clerk", payload={"approved_by": "eve"}
    )
    assert drain(engine) == 2
    info = engine.event_status(refused, tenant=TENANT)
    assert (info.status, info.outcome) == ("rejected", "role_not_permitted")
    assert "'clerk'" in (info.detail or "")
    assert engine.get_execution(execution_id, tenant=TENANT).state == "pending_approval"


def test_a_repeated_client_key_returns_the_same_event(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    first = engine.enqueue_event(
        execution_id,
        "CreateInvoice",
        tenant=TENANT,
        role="clerk",
        payload=INVOICE_PAYLOAD,
        key="k-1",
    )
    again = engine.enqueue_event(
        execution_id,
        "CreateInvoice",
        tenant=TENANT,
        role="clerk",
        payload=INVOICE_PAYLOAD,
        key="k-1",
    )
    assert again == first
    assert len(engine.history(execution_id, tenant=TENANT)) == 2
    other = engine.enqueue_event(
        execution_id,
        "CreateInvoice",
        tenant=TENANT,
        role="clerk",
        payload=INVOICE_PAYLOAD,
        key="k-2",
    )
    assert other != first


def test_concurrent_appends_leave_a_gap_free_ledger_and_lose_nothing(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    threads, per_thread = 8, 15
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(per_thread):
            try:
                event_id = engine.enqueue_event(
                    execution_id,
                    "RejectInvoice",
                    tenant=TENANT,
                    role="manager",
                    payload={"rejected_by": f"t{n}", "reason": f"r{i}"},
                )
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)
                return
            with lock:
                ids.append(event_id)

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == []
    history = engine.history(execution_id, tenant=TENANT)
    assert [h.seq for h in history] == list(range(1, threads * per_thread + 2))
    assert sorted(h.event_id for h in history[1:]) == sorted(ids)


def test_redelivered_wakeups_change_nothing(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    engine.enqueue_event(
        execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=INVOICE_PAYLOAD
    )
    drain(engine)
    before = engine.history(execution_id, tenant=TENANT)
    counts = engine.store.row_counts()
    # the same wake-up delivered again, and a worker processing the execution again
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(
            sa.text("UPDATE lf_outbox SET published_at = NULL WHERE execution_id = :id"),
            {"id": execution_id},
        )
    assert drain(engine) == 0
    token = engine.store.take_lease(execution_id, "again", 30)
    assert token is not None
    assert (
        engine.process(execution_id, tenant=TENANT, lease=Lease(owner="again", token=token, ttl=30))
        == 0
    )
    assert engine.history(execution_id, tenant=TENANT) == before
    after = engine.store.row_counts()
    assert {k: v for k, v in after.items() if k != "lf_leases"} == {
        k: v for k, v in counts.items() if k != "lf_leases"
    }


def test_a_worker_that_lost_its_lease_writes_nothing(engine: Engine) -> None:
    now = [1000.0]
    store = SQLStore(engine.store.url, clock=lambda: now[0])
    clocked = Engine(store)
    try:
        execution_id = clocked.create_execution("InvoiceApproval", tenant=TENANT)
        clocked.enqueue_event(
            execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=INVOICE_PAYLOAD
        )
        slow = store.take_lease(execution_id, "slow", ttl=10)
        assert slow == 1
        assert store.take_lease(execution_id, "fast", ttl=10) is None  # held
        now[0] += 11  # the slow worker paused past its lease
        fast = store.take_lease(execution_id, "fast", ttl=10)
        assert fast == 2
        before = clocked.history(execution_id, tenant=TENANT)
        with pytest.raises(LeaseLostError):
            clocked.process(execution_id, tenant=TENANT, lease=Lease(owner="slow", token=1, ttl=10))
        assert clocked.history(execution_id, tenant=TENANT) == before
        assert (
            clocked.process(execution_id, tenant=TENANT, lease=Lease(owner="fast", token=2, ttl=10))
            == 1
        )
    finally:
        clocked.close()


def test_snapshots_are_taken_and_replay_from_each_equals_the_projection(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    engine.enqueue_event(
        execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=INVOICE_PAYLOAD
    )
    for n in range(6):
        engine.enqueue_event(
            execution_id,
            "ApproveInvoice",
            tenant=TENANT,
            role="clerk",
            payload={"approved_by": f"x{n}"},
        )
    drain(engine)
    snapshots = engine.store.snapshot_states(execution_id, TENANT)
    assert len(snapshots) >= 2
    records = [h.record for h in engine.history(execution_id, tenant=TENANT)]
    definition = engine.definition("InvoiceApproval", 1)
    projection = engine.get_execution(execution_id, tenant=TENANT)
    for snapshot in snapshots:
        state = ledgerflow.fold(definition, [r for r in records if r.seq > snapshot.seq], snapshot)
        assert (state.name, dict(state.context), state.seq) == (
            projection.state,
            dict(projection.context),
            projection.seq,
        )


def test_versions_are_kept_and_executions_stay_pinned(engine: Engine) -> None:
    v1 = engine.definition("InvoiceApproval")
    pinned = engine.create_execution("InvoiceApproval", tenant=TENANT)
    import attrs

    v2 = attrs.evolve(v1.workflow, version=2, description="second")
    engine.register(v2)
    assert engine.definition("InvoiceApproval").version == 2
    assert engine.get_execution(pinned, tenant=TENANT).version == 1
    newer = engine.create_execution("InvoiceApproval", tenant=TENANT)
    assert engine.get_execution(newer, tenant=TENANT).version == 2
    assert engine.create_execution("InvoiceApproval", 1, tenant=TENANT)
    engine.register(v2)  # the same content again is fine
    with pytest.raises(DefinitionConflictError, match="already registered with different content"):
        engine.register(attrs.evolve(v2, description="changed"))


def test_a_definition_naming_unknown_actions_is_refused(engine: Engine) -> None:
    import attrs

    workflow = engine.definition("InvoiceApproval").workflow
    step = attrs.evolve(workflow.transitions[0].steps[0], action="erp.post")
    broken = attrs.evolve(
        workflow,
        version=9,
        transitions=(
            attrs.evolve(workflow.transitions[0], steps=(step,)),
            *workflow.transitions[1:],
        ),
    )
    with pytest.raises(DefinitionError, match=r"unknown action 'erp\.post'"):
        engine.register(broken)


BAD_INPUTS: list[tuple[str, Any, type[Exception], str]] = [
    (
        "unknown workflow",
        lambda e, x: e.create_execution("Nope", tenant=TENANT),
        WorkflowNotFoundError,
        "no workflow named 'Nope'",
    ),
    (
        "unknown version",
        lambda e, x: e.create_execution("InvoiceApproval", 7, tenant=TENANT),
        WorkflowNotFoundError,
        "has no version 7",
    ),
    (
        "empty tenant",
        lambda e, x: e.create_execution("InvoiceApproval", tenant=" "),
        InvalidInputError,
        "a tenant is required",
    ),
    (
        "context not JSON",
        lambda e, x: e.create_execution("InvoiceApproval", tenant=TENANT, context={"a": object()}),
        InvalidInputError,
        "must be JSON",
    ),
    (
        "other tenant's execution",
        lambda e, x: e.enqueue_event(x, "CreateInvoice", tenant="globex", payload=INVOICE_PAYLOAD),
        ExecutionNotFoundError,
        "not found",
    ),
    (
        "unknown execution",
        lambda e, x: e.enqueue_event("nope", "CreateInvoice", tenant=TENANT),
        ExecutionNotFoundError,
        "not found",
    ),
    (
        "unknown event",
        lambda e, x: e.enqueue_event(x, "PayInvoice", tenant=TENANT),
        InvalidEventError,
        "has no event 'PayInvoice'",
    ),
    (
        "invalid payload",
        lambda e, x: e.enqueue_event(
            x, "CreateInvoice", tenant=TENANT, payload={"invoice": {"id": 5}}
        ),
        InvalidEventError,
        "payload.invoice.id: 5 is not of type 'string'",
    ),
    (
        "payload not JSON",
        lambda e, x: e.enqueue_event(
            x, "CreateInvoice", tenant=TENANT, payload={"n": float("nan")}
        ),
        InvalidInputError,
        "must be JSON",
    ),
    (
        "execution id not Unicode",
        lambda e, x: e.create_execution("InvoiceApproval", tenant=TENANT, execution_id="x\ud800"),
        InvalidInputError,
        "not Unicode text",
    ),
    (
        "tenant not Unicode",
        lambda e, x: e.create_execution("InvoiceApproval", tenant="\udfff"),
        InvalidInputError,
        "not Unicode text",
    ),
    (
        "payload not Unicode",
        lambda e, x: e.enqueue_event(
            x, "CreateInvoice", tenant=TENANT, payload={"invoice": {"id": "\ud800"}}
        ),
        InvalidInputError,
        "not Unicode text",
    ),
    (
        "key not Unicode",
        lambda e, x: e.enqueue_event(
            x, "CreateInvoice", tenant=TENANT, payload=INVOICE_PAYLOAD, key="k\ud800"
        ),
        InvalidInputError,
        "not Unicode text",
    ),
    (
        "role not a string",
        lambda e, x: e.enqueue_event(
            x, "CreateInvoice", tenant=TENANT, role=5, payload=INVOICE_PAYLOAD
        ),
        InvalidInputError,
        "role must be a string",
    ),
    (
        "other tenant's history",
        lambda e, x: e.history(x, tenant="globex"),
        ExecutionNotFoundError,
        "not found",
    ),
    (
        "other tenant's execution view",
        lambda e, x: e.get_execution(x, tenant="globex"),
        ExecutionNotFoundError,
        "not found",
    ),
    (
        "unknown event id",
        lambda e, x: e.event_status("nope", tenant=TENANT),
        EventNotFoundError,
        "not found",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_its_error_and_changes_nothing(
    engine: Engine, call: Any, error: type[Exception], message: str
) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    before = engine.store.row_counts()
    with pytest.raises(error, match=message):
        call(engine, execution_id)
    assert engine.store.row_counts() == before


def test_another_tenants_event_is_not_found(engine: Engine) -> None:
    execution_id = engine.create_execution("InvoiceApproval", tenant=TENANT)
    event_id = engine.enqueue_event(
        execution_id, "CreateInvoice", tenant=TENANT, role="clerk", payload=INVOICE_PAYLOAD
    )
    with pytest.raises(EventNotFoundError):
        engine.event_status(event_id, tenant="globex")


def test_an_old_or_missing_schema_is_a_clear_error(tmp_path: Any) -> None:
    store = SQLStore(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(SchemaError, match=r"run `ledgerflow db upgrade`"):
        store.check_schema()
    assert store.revision() is None
    store.upgrade()
    store.check_schema()
    assert store.upgrade() == store.revision()  # upgrading twice is harmless
    store.close()
