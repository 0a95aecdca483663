"""The InvoiceBilling workflow under ledgerflow's property test (``check_workflow``): whatever
events arrive, with crashes, expired leases, redeliveries and retries around them, the
credit notes of an invoice never add up to more than its gross total, are numbered without
gaps, and are written exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from ledgerflow import load
from ledgerflow.store import ALL_TENANTS
from ledgerflow.testing import Harness, Observation, check_workflow

import ledgerflow_billing
from ledgerflow_billing.tables import credit_notes
from ledgerflow_billing.tax import VAT_RATES

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "invoice_billing.yaml"

# what the schema cannot say: a country the rate table knows, amounts in whole cents
invoices = st.fixed_dictionaries(
    {
        "invoice": st.fixed_dictionaries(
            {
                "id": st.sampled_from(["INV-1", "INV-2"]),
                # any net amount; and amounts of 50 and more, which leave room for credits
                "net": st.one_of(st.integers(1, 100_000), st.integers(5_000, 100_000)).map(
                    lambda cents: cents / 100
                ),
                "country": st.sampled_from(sorted(VAT_RATES)),
            }
        )
    }
)
credits = st.fixed_dictionaries(
    {
        # any amount, above the gross total too; and small ones, several of which fit
        "amount": st.one_of(st.integers(1, 2_000), st.integers(1, 120_000)).map(
            lambda cents: cents / 100
        ),
        "reason": st.just("goodwill"),
    }
)


def notes(harness: Harness) -> list[dict[str, Any]]:
    """The effects: the credit notes of the harness's tenant, by number."""
    with harness.store.read(tenant=ALL_TENANTS) as conn:
        rows = conn.execute(
            sa.select(credit_notes.c.number, credit_notes.c.invoice_id, credit_notes.c.amount)
            .where(credit_notes.c.tenant == harness.tenant)
            .order_by(credit_notes.c.number)
        )
        return [{"number": n, "invoice": i, "amount": float(a)} for n, i, a in rows]


def never_above_the_gross_total(observed: Observation) -> None:
    credited = round(sum(note["amount"] for note in observed.effects), 2)
    if credited:
        assert credited <= observed.context["tax"]["gross"], (credited, observed.context)


def numbered_without_gaps(observed: Observation) -> None:
    numbers = [note["number"] for note in observed.effects]
    assert numbers == list(range(1, len(numbers) + 1))
    most_notes.append(len(numbers))


most_notes: list[int] = []


def test_credit_notes_keep_their_promises() -> None:
    check_workflow(
        load(WORKFLOW),
        setup=ledgerflow_billing.create_tables,
        invariants=[never_above_the_gross_total, numbered_without_gaps],
        effects=notes,
        payloads={"Issue": invoices, "Credit": credits},
        settings=hypothesis.settings(
            max_examples=30,
            stateful_step_count=5,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        ),
    )
    assert max(most_notes) >= 2  # the examples did issue credit notes
