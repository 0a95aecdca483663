"""The table ``billing.issue_credit_note`` writes, and :func:`create_tables`.

A plugin is loaded by every engine, including one that only lists plugins or runs
``ledgerflow actions`` against a database it may not change; so the plugin creates no table
when it loads. The application creates it once, like its own tables, in either of two ways::

    ledgerflow_billing.create_tables(engine)          # from the app's own setup(engine)
    ledgerflow --app ledgerflow_billing.tables db upgrade   # from the command line

Until it exists, ``billing.issue_credit_note`` fails its step with the database's "no such
table" error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = ["MONEY", "create_tables", "credit_notes", "metadata", "setup"]

metadata = sa.MetaData()

# exact decimals in the database, JSON numbers (floats) in Python, as in ledgerflow's examples
MONEY = sa.Numeric(14, 2, asdecimal=False)

credit_notes = sa.Table(
    "credit_notes",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    # numbered 1, 2, 3… per tenant without gaps, as invoicing rules usually ask
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("invoice_id", sa.String(100), nullable=False, index=True),
    sa.Column("amount", MONEY, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    # the idempotency key of the step that issued it: one note per step, traceable to it
    sa.Column("step_key", sa.String(400), nullable=False, unique=True),
)
"""One row per credit note: which tenant and invoice, how much, why, and which step issued
it."""


def create_tables(engine: Engine) -> None:
    """Create ``credit_notes`` in ``engine``'s database if it is missing (idempotent)."""
    metadata.create_all(engine.store.engine, checkfirst=True)


def setup(engine: Engine) -> None:
    """What ``ledgerflow --app ledgerflow_billing.tables db upgrade`` calls: create the
    tables."""
    create_tables(engine)
