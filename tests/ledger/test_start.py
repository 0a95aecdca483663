"""Engine.start: an execution and its first event in one transaction, the same ledger as
create_execution then enqueue_event, and nothing written when anything is wrong."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import sqlalchemy as sa

import invoice_app
import ledgerflow
from ledgerflow.engine import Engine
from ledgerflow.errors import InvalidEventError, InvalidInputError, WorkflowNotFoundError
from ledgerflow.store import ALL_TENANTS
from ledgerflow.worker import Worker

TENANT = "acme"
PAYLOAD = {"invoice": {"id": "INV-1", "total": 120, "customer_id": "C-1"}}


def _records(engine: Engine, execution_id: str) -> list[tuple[str, Any]]:
    return [(h.kind, h.record.seq) for h in engine.history(execution_id, tenant=TENANT)]


def test_start_writes_what_create_then_enqueue_writes(engine: Engine) -> None:
    one, event_id = engine.start(
        "InvoiceApproval", "CreateInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD
    )
    two = engine.create_execution("InvoiceApproval", tenant=TENANT)
    other = {"invoice": {**PAYLOAD["invoice"], "id": "INV-2"}}
    engine.enqueue_event(two, "CreateInvoice", tenant=TENANT, role="clerk", payload=other)
    assert engine.event_status(event_id, tenant=TENANT).status == "pending"
    assert _records(engine, one) == _records(engine, two)
    Worker(engine, poll_interval=0.01).run(until_idle=True)
    for x in (one, two):
        assert engine.get_execution(x, tenant=TENANT).state == "pending_approval"
    assert _records(engine, one) == _records(engine, two)
    info = engine.event_status(event_id, tenant=TENANT)
    assert (info.status, info.outcome) == ("processed", "applied")


def _submit(engine: Engine, **changes: Any) -> tuple[str, str]:
    """A clerk's start of invoice inv-1 under the key submit-inv-1, or with ``changes``."""
    call: dict[str, Any] = {
        "tenant": TENANT,
        "role": "clerk",
        "payload": PAYLOAD,
        "execution_id": "inv-1",
        "key": "submit-inv-1",
        **changes,
    }
    return engine.start("InvoiceApproval", "CreateInvoice", **call)


def test_a_retried_start_with_its_id_and_key_returns_the_first_ids(engine: Engine) -> None:
    first = _submit(engine)
    before = engine.store.row_counts()
    assert _submit(engine) == first
    assert engine.store.row_counts() == before
    # the id without the key, or with another key, is taken
    for key in (None, "another"):
        with pytest.raises(InvalidInputError, match="cannot be used"):
            _submit(engine, key=key)
    # nor is another tenant's retry answered with this tenant's ids
    with pytest.raises(InvalidInputError, match="cannot be used"):
        _submit(engine, tenant="globex")
    assert engine.store.row_counts() == before


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ({"event": "NoSuchEvent"}, InvalidEventError, "NoSuchEvent"),
        ({"payload": {"invoice": {"id": "X"}}}, InvalidEventError, "payload"),
        ({"payload": ["not", "an", "object"]}, InvalidInputError, "JSON object"),
        ({"context": "not an object"}, InvalidInputError, "context"),
        ({"role": 7}, InvalidInputError, "role"),
        ({"key": "ledgerflow.mine"}, InvalidInputError, "ledgerflow's own"),
        ({"key": ""}, InvalidInputError, "key"),
        ({"tenant": ""}, InvalidInputError, "tenant"),
        ({"tenant": "*"}, InvalidInputError, "tenant"),
        ({"workflow": "NoSuchWorkflow"}, WorkflowNotFoundError, "NoSuchWorkflow"),
        ({"execution_id": "x" * 65}, InvalidInputError, "execution id"),
    ],
)
def test_bad_input_to_start_writes_nothing(
    engine: Engine, args: dict[str, Any], error: type[Exception], match: str
) -> None:
    call: dict[str, Any] = {
        "workflow": "InvoiceApproval",
        "event": "CreateInvoice",
        "tenant": TENANT,
        "role": "clerk",
        "payload": PAYLOAD,
        **args,
    }
    before = engine.store.row_counts()
    with pytest.raises(error, match=match):
        engine.start(call.pop("workflow"), call.pop("event"), **call)
    assert engine.store.row_counts() == before


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_on_postgresql_start_writes_in_one_statement(engine: Engine) -> None:
    """The execution, its first two records and the event's wake-up: one INSERT statement
    (data-modifying CTEs), whose rows are those create_execution then enqueue_event write."""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    sa.event.listen(engine.store.engine, "before_cursor_execute", seen)
    try:
        x, event_id = engine.start(
            "InvoiceApproval", "CreateInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD
        )
    finally:
        sa.event.remove(engine.store.engine, "before_cursor_execute", seen)
    writes = [s for s in statements if s.startswith(("INSERT", "UPDATE", "WITH"))]
    assert len(writes) == 1, writes
    assert writes[0].startswith("WITH created AS (INSERT INTO lf_executions")
    assert _records(engine, x) == [("execution_started", 1), ("event_received", 2)]
    assert engine.event_status(event_id, tenant=TENANT).status == "pending"
    with engine.store.read(tenant=TENANT) as conn:
        wakeups = conn.execute(
            sa.text("SELECT event_id, published_at FROM lf_outbox WHERE execution_id = :x"),
            {"x": x},
        ).all()
    assert [(w.event_id, w.published_at) for w in wakeups] == [(event_id, None)]


def _renamed_first_event(engine: Engine, version: int, event: str) -> ledgerflow.Workflow:
    """InvoiceApproval at ``version``, its first transition on ``event`` instead."""
    workflow = engine.definition("InvoiceApproval", 1).workflow
    was = workflow.transitions[0].on
    first = attrs.evolve(workflow.transitions[0], on=event)
    events = {event if name == was else name: spec for name, spec in workflow.events.items()}
    return attrs.evolve(
        workflow, version=version, events=events, transitions=(first, *workflow.transitions[1:])
    )


def test_a_start_takes_the_version_another_process_registered_since(db_url: str) -> None:
    """The latest version is remembered from one start to the next, and checked by the write
    itself: a version registered elsewhere meanwhile is the one a later start pins, and its
    events are the ones it is judged by."""
    here, elsewhere = Engine(db_url), Engine(db_url)
    try:
        invoice_app.setup(here)
        first, _ = here.start(
            "InvoiceApproval", "CreateInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD
        )
        elsewhere.register(_renamed_first_event(here, 2, "OpenInvoice"))
        # here remembers version 1, which knows CreateInvoice and not OpenInvoice
        second, _ = here.start(
            "InvoiceApproval", "OpenInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD
        )
        elsewhere.register(_renamed_first_event(here, 3, "DraftInvoice"))
        before = here.store.row_counts()
        with pytest.raises(InvalidEventError):
            # version 3 is the latest now, and it no longer knows OpenInvoice
            here.start(
                "InvoiceApproval", "OpenInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD
            )
        assert here.store.row_counts() == before
        third = here.create_execution("InvoiceApproval", tenant=TENANT)
        versions = [here.get_execution(x, tenant=TENANT).version for x in (first, second, third)]
        assert versions == [1, 2, 3]
    finally:
        here.close()
        elsewhere.close()


def test_a_start_after_the_workflow_is_gone_says_so_and_writes_nothing(engine: Engine) -> None:
    engine.start("InvoiceApproval", "CreateInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD)
    with engine.store.write(tenant=ALL_TENANTS) as conn:
        conn.execute(sa.text("DELETE FROM lf_definitions WHERE name = 'InvoiceApproval'"))
    before = engine.store.row_counts()
    with pytest.raises(WorkflowNotFoundError, match="no workflow named 'InvoiceApproval'"):
        engine.start(
            "InvoiceApproval", "CreateInvoice", tenant=TENANT, role="clerk", payload=PAYLOAD
        )
    assert engine.store.row_counts() == before


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_on_postgresql_a_second_start_does_not_look_the_latest_version_up(engine: Engine) -> None:
    """The first start reads the latest version; the next ones only check it, in the statement
    that writes: one round trip less per start."""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    call: dict[str, Any] = {"tenant": TENANT, "role": "clerk", "payload": PAYLOAD}
    sa.event.listen(engine.store.engine, "before_cursor_execute", seen)
    try:
        engine.start("InvoiceApproval", "CreateInvoice", **call)
        first, statements[:] = list(statements), []
        engine.start("InvoiceApproval", "CreateInvoice", **call)
    finally:
        sa.event.remove(engine.store.engine, "before_cursor_execute", seen)
    assert any("max(lf_definitions.version)" in s for s in first), first
    assert len(statements) == len(first) - 1, statements
    assert not any(s.startswith("SELECT max(") for s in statements), statements
    (write,) = [s for s in statements if s.startswith("WITH")]
    assert "(SELECT max(version) FROM lf_definitions" in write
