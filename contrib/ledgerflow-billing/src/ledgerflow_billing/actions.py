"""The billing actions, and :func:`register_actions`, which the plugin's
``ledgerflow_register_actions`` hook calls.

- ``billing.compute_tax`` (simple, pure): the VAT on a net amount in a country.
- ``billing.issue_credit_note`` (database, SERIALIZABLE): credit part or all of an invoice,
  numbering credit notes per tenant without gaps and never crediting more than the invoice's
  total.

Each takes its parameters as an attrs class, so a step's parameters are checked, and the
action's JSON Schema (``ledgerflow actions --json``) written, from one declaration.
"""

from __future__ import annotations

import re
from decimal import Decimal

import attrs
import sqlalchemy as sa
from ledgerflow.model import JSON
from ledgerflow.registry import ActionContext, ActionRegistry, Isolation

from ledgerflow_billing.tables import credit_notes
from ledgerflow_billing.tax import MAX_AMOUNT, Country, to_cents, vat

__all__ = [
    "CreditExceedsInvoiceError",
    "CreditNoteRequest",
    "TaxRequest",
    "compute_tax",
    "issue_credit_note",
    "register_actions",
]

_CURRENCY = re.compile(r"^[A-Z]{3}$")


# Validators name the field first, as the registry's own messages do ("amount: …"): their
# message is reported to the user as it is.


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"{attribute.name}: must be between 0 and {MAX_AMOUNT}, got {value}")


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value <= MAX_AMOUNT:
        raise ValueError(f"{attribute.name}: must be above 0 and at most {MAX_AMOUNT}, got {value}")


def _currency(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _CURRENCY.match(value):
        raise ValueError(f"{attribute.name}: must be an ISO 4217 code such as EUR, got {value!r}")


def _not_blank(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name}: must not be empty")


# --8<-- [start:tax]
@attrs.frozen(kw_only=True)
class TaxRequest:
    """The parameters of ``billing.compute_tax``."""

    amount: float = attrs.field(
        validator=_non_negative,
        metadata={"description": "the net amount; rounded to cents, half up"},
    )
    country: Country = attrs.field(
        metadata={"description": "where the tax is due: an ISO 3166 code the rate table lists"}
    )


def compute_tax(params: TaxRequest, ctx: ActionContext) -> JSON:
    """Compute the VAT on a net amount: the country's rate, the tax and the gross, in cents."""
    return vat(params.amount, params.country).to_json()


# --8<-- [end:tax]


@attrs.frozen(kw_only=True)
class CreditNoteRequest:
    """The parameters of ``billing.issue_credit_note``."""

    invoice_id: str = attrs.field(
        validator=_not_blank, metadata={"description": "the invoice being credited"}
    )
    invoice_total: float = attrs.field(
        validator=_positive,
        metadata={"description": "the invoice's total: its credit notes never add up to more"},
    )
    amount: float = attrs.field(
        validator=_positive,
        metadata={"description": "how much to credit; rounded to cents, half up"},
    )
    reason: str = attrs.field(validator=_not_blank, metadata={"description": "printed on the note"})
    currency: str = attrs.field(default="EUR", validator=_currency)


class CreditExceedsInvoiceError(Exception):
    """A credit note would take an invoice's credit notes above its total. Trying again cannot
    mend it, so the plugin's retry policy never retries it."""


def issue_credit_note(params: CreditNoteRequest, ctx: ActionContext) -> JSON:
    """Issue a credit note against an invoice: numbered per tenant, never above the invoice."""
    conn = ctx.connection
    assert conn is not None, "a database action always has a connection"
    amount = to_cents(params.amount)
    total = to_cents(params.invoice_total)
    mine = credit_notes.c.tenant == ctx.tenant
    # Read-then-insert: at SERIALIZABLE, two notes issued at once for one invoice (or taking
    # one number) cannot both commit; ledgerflow retries the loser's whole transaction, which
    # then sees the winner's note.
    credited_so_far = conn.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(credit_notes.c.amount), 0)).where(
            mine, credit_notes.c.invoice_id == params.invoice_id
        )
    )
    credited = to_cents(Decimal(str(credited_so_far)))
    if credited + amount > total:
        raise CreditExceedsInvoiceError(
            f"invoice {params.invoice_id} (tenant {ctx.tenant}): crediting {amount} more would "
            f"bring its credit notes to {credited + amount}, above its total of {total}; "
            f"at most {total - credited} can still be credited"
        )
    last = conn.scalar(sa.select(sa.func.max(credit_notes.c.number)).where(mine))
    number = (last or 0) + 1
    conn.execute(
        credit_notes.insert().values(
            tenant=ctx.tenant,
            number=number,
            invoice_id=params.invoice_id,
            amount=amount,
            currency=params.currency,
            reason=params.reason,
            step_key=ctx.idempotency_key,
        )
    )
    return {
        "credit_note": f"CN-{number:06d}",
        "number": number,
        "invoice_id": params.invoice_id,
        "amount": float(amount),
        "currency": params.currency,
        "credited_total": float(credited + amount),
        "remaining": float(total - credited - amount),
    }


# --8<-- [start:register]
def register_actions(registry: ActionRegistry) -> None:
    """Register ``billing.compute_tax`` and ``billing.issue_credit_note`` in ``registry``."""
    registry.action("billing.compute_tax", params=TaxRequest)(compute_tax)
    registry.action(
        "billing.issue_credit_note", params=CreditNoteRequest, isolation=Isolation.SERIALIZABLE
    )(issue_credit_note)


# --8<-- [end:register]
