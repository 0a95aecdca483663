"""The billing actions called directly, as functions: their parameters, results and errors,
and the plugin's hooks called through a plugin manager of their own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

import pytest
import sqlalchemy as sa
from ledgerflow import ActionContext, ActionRegistry, InvalidParametersError
from ledgerflow.hookspecs import RetryDecision, StepInfo
from ledgerflow.plugins import Plugins

from ledgerflow_billing import plugin
from ledgerflow_billing.actions import (
    CreditExceedsInvoiceError,
    CreditNoteRequest,
    TaxRequest,
    compute_tax,
    issue_credit_note,
    register_actions,
)
from ledgerflow_billing.metrics import metrics
from ledgerflow_billing.tables import credit_notes, metadata
from ledgerflow_billing.tax import VAT_RATES, Country


@pytest.fixture
def billing_registry() -> ActionRegistry:
    registry = ActionRegistry()
    register_actions(registry)
    return registry


def context(step_id: str = "tax", *, tenant: str = "acme", connection: Any = None) -> ActionContext:
    return ActionContext(
        idempotency_key=f"x-1:e-1:{step_id}",
        execution_id="x-1",
        tenant=tenant,
        event_id="e-1",
        step_id=step_id,
        connection=connection,
    )


def problems(registry: ActionRegistry, action: str, params: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(InvalidParametersError) as caught:
        registry.get(action).validate(params)
    return caught.value.problems


# --------------------------------------------------------------------------------------------
# billing.compute_tax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "country", "expected"),
    [
        (100, "DE", {"country": "DE", "rate": 0.19, "net": 100.0, "tax": 19.0, "gross": 119.0}),
        (0, "FR", {"country": "FR", "rate": 0.2, "net": 0.0, "tax": 0.0, "gross": 0.0}),
        # 0.5 * 19% = 0.095: half a cent rounds up
        (0.5, "DE", {"country": "DE", "rate": 0.19, "net": 0.5, "tax": 0.1, "gross": 0.6}),
        # 10.10 * 25.5% = 2.5755
        (10.1, "FI", {"country": "FI", "rate": 0.255, "net": 10.1, "tax": 2.58, "gross": 12.68}),
        # the amount itself is rounded to cents first: 1.005 → 1.01
        (1.005, "LU", {"country": "LU", "rate": 0.17, "net": 1.01, "tax": 0.17, "gross": 1.18}),
    ],
)
def test_compute_tax_rounds_to_cents_half_up(
    billing_registry: ActionRegistry, amount: float, country: str, expected: dict[str, Any]
) -> None:
    params = billing_registry.get("billing.compute_tax").validate(
        {"amount": amount, "country": country}
    )
    assert compute_tax(params, context()) == expected


def test_compute_tax_parameter_errors_name_each_field(billing_registry: ActionRegistry) -> None:
    assert problems(
        billing_registry, "billing.compute_tax", {"amount": "100", "country": "XX"}
    ) == (
        "amount: expected number, got string",
        'country: expected one of "AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "LU", '
        '"NL", "PL", "PT", "SE", got "XX"',
    )
    assert problems(billing_registry, "billing.compute_tax", {"country": "DE", "rate": 1}) == (
        "amount: missing required field",
        "rate: unknown field",
    )
    assert problems(billing_registry, "billing.compute_tax", {"amount": -1, "country": "DE"}) == (
        "amount: must be between 0 and 1000000000000, got -1.0",
    )


def test_the_country_schema_lists_exactly_the_rate_table(billing_registry: ActionRegistry) -> None:
    schema = billing_registry.get("billing.compute_tax").json_schema()
    assert schema["properties"]["country"]["enum"] == sorted(VAT_RATES)
    assert set(get_args(Country)) == set(VAT_RATES)
    assert schema["required"] == ["amount", "country"]
    assert schema["additionalProperties"] is False


def test_compute_tax_is_a_simple_action_and_the_other_a_serializable_database_one(
    billing_registry: ActionRegistry,
) -> None:
    described = {entry["name"]: entry for entry in billing_registry.describe()}
    assert set(described) == {"billing.compute_tax", "billing.issue_credit_note"}
    tax = described["billing.compute_tax"]
    assert (tax["kind"], tax["isolation"]) == ("simple", None)
    note = described["billing.issue_credit_note"]
    assert (note["kind"], note["isolation"]) == ("database", "SERIALIZABLE")
    assert note["parameters"]["properties"]["currency"] == {"type": "string", "default": "EUR"}


def test_tax_request_is_the_schema_class(billing_registry: ActionRegistry) -> None:
    params = billing_registry.get("billing.compute_tax").validate({"amount": 3, "country": "SE"})
    assert params == TaxRequest(amount=3.0, country="SE")


# --------------------------------------------------------------------------------------------
# billing.issue_credit_note
# --------------------------------------------------------------------------------------------


@pytest.fixture
def billing_db() -> Iterator[sa.Engine]:
    """An in-memory SQLite database with the ``credit_notes`` table."""
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def credit(
    db: sa.Engine,
    step_id: str,
    *,
    tenant: str = "acme",
    invoice_id: str = "INV-1",
    total: float = 119,
    amount: float,
) -> Any:
    params = CreditNoteRequest(
        invoice_id=invoice_id, invoice_total=total, amount=amount, reason="damaged"
    )
    with db.begin() as conn:
        return issue_credit_note(params, context(step_id, tenant=tenant, connection=conn))


def test_credit_notes_are_numbered_per_tenant_and_record_their_step(billing_db: sa.Engine) -> None:
    first = credit(billing_db, "c1", amount=19)
    assert first == {
        "credit_note": "CN-000001",
        "number": 1,
        "invoice_id": "INV-1",
        "amount": 19.0,
        "currency": "EUR",
        "credited_total": 19.0,
        "remaining": 100.0,
    }
    assert credit(billing_db, "c2", amount=0.005)["credit_note"] == "CN-000002"  # 0.01
    assert credit(billing_db, "c3", tenant="globex", amount=5)["credit_note"] == "CN-000001"
    with billing_db.connect() as conn:
        rows = conn.execute(
            sa.select(credit_notes.c.tenant, credit_notes.c.number, credit_notes.c.amount)
            .where(credit_notes.c.tenant == "acme")
            .order_by(credit_notes.c.number)
        ).all()
        keys = conn.scalars(sa.select(credit_notes.c.step_key).order_by(credit_notes.c.step_key))
        assert list(keys) == ["x-1:e-1:c1", "x-1:e-1:c2", "x-1:e-1:c3"]
    assert rows == [("acme", 1, 19.0), ("acme", 2, 0.01)]


def test_credit_notes_never_exceed_the_invoice(billing_db: sa.Engine) -> None:
    credit(billing_db, "c1", amount=100)
    with pytest.raises(CreditExceedsInvoiceError, match=r"at most 19\.00 can still be credited"):
        credit(billing_db, "c2", amount=19.01)
    # another invoice, and exactly the rest of this one, are fine
    assert credit(billing_db, "c3", invoice_id="INV-2", amount=119)["remaining"] == 0.0
    assert credit(billing_db, "c4", amount=19)["remaining"] == 0.0
    with billing_db.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(credit_notes)) == 3


def test_credit_note_parameter_errors_name_each_field(billing_registry: ActionRegistry) -> None:
    assert problems(
        billing_registry,
        "billing.issue_credit_note",
        {"invoice_id": "INV-1", "invoice_total": 0, "amount": 5, "reason": "x", "currency": "eur"},
    ) == ("invoice_total: must be above 0 and at most 1000000000000, got 0.0",)
    assert problems(
        billing_registry,
        "billing.issue_credit_note",
        {"invoice_id": "INV-1", "invoice_total": 10, "amount": 5, "reason": "x", "currency": "eur"},
    ) == ("currency: must be an ISO 4217 code such as EUR, got 'eur'",)
    assert problems(
        billing_registry, "billing.issue_credit_note", {"invoice_id": 7, "amount": True}
    ) == (
        "invoice_id: expected string, got integer",
        "invoice_total: missing required field",
        "amount: expected number, got boolean",
        "reason: missing required field",
    )


# --------------------------------------------------------------------------------------------
# The hooks
# --------------------------------------------------------------------------------------------


@pytest.fixture
def billing_plugins() -> Plugins:
    """A plugin manager with only ledgerflow's own plugin and this one, registered in code."""
    plugins = Plugins(entry_points=False, disabled=())
    plugins.register(plugin, "billing")
    return plugins


def step_of(action: str) -> StepInfo:
    return StepInfo(
        execution_id="x-1", tenant="acme", event_id="e-1", step_id="s", action=action, key="k"
    )


def test_the_step_wrapper_times_billing_actions_only(billing_plugins: Plugins) -> None:
    def timings(action: str) -> tuple[int, int]:
        found = metrics.snapshot().actions.get(action)
        return (found.calls, found.failures) if found else (0, 0)

    before = timings("billing.compute_tax"), timings("ledgerflow.record")
    assert billing_plugins.run_step(step_of("billing.compute_tax"), {}, lambda: {"ok": 1}) == {
        "ok": 1
    }

    def fails() -> Any:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError, match="down"):
        billing_plugins.run_step(step_of("billing.compute_tax"), {}, fails)
    billing_plugins.run_step(step_of("ledgerflow.record"), {}, lambda: None)
    calls, failures = timings("billing.compute_tax")
    assert (calls - before[0][0], failures - before[0][1]) == (2, 1)
    assert timings("ledgerflow.record") == before[1]
    assert metrics.snapshot().actions["billing.compute_tax"].max_seconds >= 0


def test_completed_executions_are_counted_by_tenant_and_state(billing_plugins: Plugins) -> None:
    key = ("counted-tenant", "closed")
    before = metrics.snapshot().completed.get(key, 0)
    for execution in ("x-1", "x-2"):
        billing_plugins.notify(
            "ledgerflow_execution_completed",
            execution_id=execution,
            tenant="counted-tenant",
            state="closed",
        )
    assert metrics.snapshot().completed[key] == before + 2


def test_a_credit_above_the_invoice_is_never_retried(billing_plugins: Plugins) -> None:
    def ask(action: str, error: BaseException) -> Any:
        return billing_plugins.decide(
            "ledgerflow_retry_policy", action=action, error=error, attempt=1
        )

    assert ask("billing.issue_credit_note", CreditExceedsInvoiceError("no")) == RetryDecision(
        retry=False
    )
    # anything else is left to the step's strategy
    assert ask("billing.issue_credit_note", sa.exc.OperationalError("s", {}, Exception())) is None
    assert ask("ledgerflow.db.insert", CreditExceedsInvoiceError("no")) is None
