"""The application side of the InvoiceApproval example: its tables, and ``setup(engine)``.

The workflow (``invoice_approval.yaml`` beside this file) writes to two tables of the
application's own, through the built-in ``ledgerflow.db.insert`` and ``ledgerflow.db.update``
actions: ``invoices`` and ``payments``. Both carry a ``tenant`` column, so those actions scope
every row they write to the execution's tenant. The tables have to exist wherever the workflow
runs; ``setup`` creates them (when missing) and registers the workflow::

    ledgerflow --app ledgerflow.examples.invoice_app worker       # from an installed wheel
    PYTHONPATH=contrib/examples/invoice_approval \\
        ledgerflow --app invoice_app worker                        # from a source checkout

``ledgerflow demo`` calls the same ``setup``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = ["DEFINITION", "invoices", "metadata", "payments", "rows", "setup"]

DEFINITION = Path(__file__).with_name("invoice_approval.yaml")
"""The workflow's definition file, shipped beside this module."""

# --8<-- [start:tables]
metadata = sa.MetaData()

# Amounts are exact decimals in the database and plain JSON numbers (floats) in Python, like
# every value a step reads or returns.
MONEY = sa.Numeric(12, 2, asdecimal=False)

invoices = sa.Table(
    "invoices",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("customer_id", sa.String(100), nullable=False),
    sa.Column("total", MONEY, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("approved_by", sa.String(200)),
    sa.Column("rejected_by", sa.String(200)),
    sa.Column("rejection_reason", sa.Text),
)
"""One row per invoice and tenant; ``status`` follows the workflow: ``pending_approval``,
``escalated``, ``approved``, ``payment_scheduled`` or ``rejected``."""

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("invoice_id", sa.String(100), primary_key=True),
    sa.Column("amount", MONEY, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
)
"""At most one scheduled payment per invoice: a second insert for the same invoice fails."""
# --8<-- [end:tables]


def setup(engine: Engine) -> None:
    """Create the ``invoices`` and ``payments`` tables if they are missing, behind the tenant
    wall on PostgreSQL, and register the InvoiceApproval workflow (registering the same
    version again changes nothing)."""
    from ledgerflow.store import tenant_wall

    with engine.store.write() as conn:
        metadata.create_all(conn, checkfirst=True)
        for table in metadata.sorted_tables:
            tenant_wall(conn, table)
    engine.register(DEFINITION)


def rows(engine: Engine, tenant: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of ``invoices`` and ``payments`` that belong to ``tenant``, in key order, as
    JSON values."""
    found: dict[str, list[dict[str, Any]]] = {}
    with engine.store.read(tenant=tenant) as conn:
        for table in (invoices, payments):
            query = sa.select(table).where(table.c.tenant == tenant)
            found[table.name] = [
                {
                    # SQLite gives back a whole amount as an int: make every amount a float
                    column: float(value)
                    if table.c[column].type is MONEY and value is not None
                    else value
                    for column, value in row._mapping.items()
                }
                for row in conn.execute(query.order_by(*table.primary_key.columns))
            ]
    return found
