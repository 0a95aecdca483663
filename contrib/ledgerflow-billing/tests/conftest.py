"""The billing plugin's tests use ledgerflow's testing kit: its pytest plugin gives each test a
``ledgerflow_harness`` (a real engine on a fresh store) with the workflow and the tables
named here. Run them on PostgreSQL with ``pytest --ledgerflow-db postgresql://...``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from ledgerflow import Engine

import ledgerflow_billing

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "invoice_billing.yaml"


@pytest.fixture
def ledgerflow_definitions() -> list[Path]:
    """Every harness registers the InvoiceBilling example workflow..."""
    return [WORKFLOW]


@pytest.fixture
def ledgerflow_setup() -> Callable[[Engine], None]:
    """...after creating the ``credit_notes`` table, as an application's setup does."""
    return ledgerflow_billing.create_tables
