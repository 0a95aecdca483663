"""Shared fixtures: the example definitions shipped in contrib/."""

from __future__ import annotations

from pathlib import Path

import pytest

import ledgerflow

ROOT = Path(__file__).resolve().parent.parent
INVOICE_APPROVAL = ROOT / "contrib" / "examples" / "invoice_approval" / "invoice_approval.yaml"


@pytest.fixture(scope="session")
def invoice_path() -> Path:
    """The InvoiceApproval example's YAML file."""
    return INVOICE_APPROVAL


@pytest.fixture(scope="session")
def invoice() -> ledgerflow.Definition:
    """The InvoiceApproval example, loaded and compiled."""
    return ledgerflow.load(INVOICE_APPROVAL)
