"""Properties of ``billing.compute_tax`` over generated amounts and countries."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from ledgerflow import ActionContext, ActionRegistry

from ledgerflow_billing.actions import compute_tax, register_actions
from ledgerflow_billing.tax import CENT, MAX_AMOUNT, VAT_RATES, Country, vat

REGISTRY = ActionRegistry()
register_actions(REGISTRY)
ACTION = REGISTRY.get("billing.compute_tax")
CONTEXT = ActionContext(
    idempotency_key="x:e:tax", execution_id="x", tenant="t", event_id="e", step_id="tax"
)

countries = st.sampled_from(sorted(VAT_RATES))
# amounts as a step would give them: whole cents, as JSON numbers
cents = st.integers(min_value=0, max_value=MAX_AMOUNT * 100).map(lambda c: c / 100)
# and any number the schema admits, with sub-cent digits
amounts = st.floats(min_value=0, max_value=MAX_AMOUNT, allow_nan=False, allow_infinity=False)


def exact(value: object) -> Decimal:
    """The decimal a JSON number written by the action stands for."""
    assert isinstance(value, float)
    return Decimal(repr(value))


# no deadline: the machines running the tests are shared, and speed is not the property
@settings(deadline=None)
@given(amount=cents, country=countries)
def test_gross_is_amount_plus_tax_to_the_cent(amount: float, country: Country) -> None:
    result = compute_tax(ACTION.validate({"amount": amount, "country": country}), CONTEXT)
    assert isinstance(result, dict)
    net, tax, gross = (exact(result[k]) for k in ("net", "tax", "gross"))
    assert net == exact(amount)
    assert gross == exact(amount) + tax
    for value in (net, tax, gross):
        assert value == value.quantize(CENT)
    # the tax is the exact product, rounded half up
    product = exact(amount) * VAT_RATES[country]
    assert abs(tax - product) <= Decimal("0.005")
    assert tax - product != Decimal("-0.005")
    assert result["rate"] == float(VAT_RATES[country])


@settings(deadline=None)
@given(amount=amounts, country=countries)
def test_any_amount_is_rounded_to_cents_first(amount: float, country: Country) -> None:
    result = vat(amount, country)
    assert abs(result.net - Decimal(repr(amount))) <= Decimal("0.005")
    assert result.gross == result.net + result.tax
    assert result.to_json() == compute_tax(
        ACTION.validate({"amount": amount, "country": country}), CONTEXT
    )
    # what the action returns reads back as exactly the cents it computed
    assert exact(result.to_json()["gross"]) == result.gross
