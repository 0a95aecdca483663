"""ledgerflow-billing: billing actions for ledgerflow workflows, and the example of a
third-party ledgerflow plugin.

Installing the distribution is enough for ledgerflow to find it (entry point ``billing`` in
the group ``ledgerflow``, the module :mod:`ledgerflow_billing.plugin`). The credit-note action
needs its table: call :func:`create_tables` once (see :mod:`ledgerflow_billing.tables`).
"""

from __future__ import annotations

from ledgerflow_billing.actions import (
    CreditExceedsInvoiceError,
    CreditNoteRequest,
    TaxRequest,
    compute_tax,
    issue_credit_note,
    register_actions,
)
from ledgerflow_billing.metrics import BillingMetrics, metrics
from ledgerflow_billing.tables import create_tables, credit_notes
from ledgerflow_billing.tax import VAT_RATES, Tax, vat

__all__ = [
    "VAT_RATES",
    "BillingMetrics",
    "CreditExceedsInvoiceError",
    "CreditNoteRequest",
    "Tax",
    "TaxRequest",
    "compute_tax",
    "create_tables",
    "credit_notes",
    "issue_credit_note",
    "metrics",
    "register_actions",
    "vat",
]
