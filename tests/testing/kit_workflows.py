"""Workflows the testing kit's own tests drive: an expense approval with simple actions (and
a copy with a planted bug), plus an action registry that counts its effects."""

from __future__ import annotations

from typing import Any

import ledgerflow
from ledgerflow.registry import ActionContext, ActionRegistry

EXPENSE = """
name: Expense
version: 1
initial_state: draft
states: [draft, submitted, approved, rejected]
terminal_states: [approved, rejected]
events:
  Submit:
    payload:
      type: object
      required: [amount]
      properties: {amount: {type: number, minimum: 0}}
  Approve: {}
  Reject: {}
transitions:
  - name: submit
    from: draft
    to: submitted
    on: Submit
    roles: [employee]
    set: {amount: {expr: payload.amount}}
    steps:
      - {id: log, action: note, params: {amount: {expr: payload.amount}}}
  - name: approve
    from: submitted
    to: approved
    on: Approve
    roles: [manager]
    condition: "context.amount <= 100"
    steps:
      - {id: pay, action: note, params: {amount: {expr: context.amount}}}
      - {id: tell, action: note, depends_on: [pay], params: {amount: 0}}
  - name: reject
    from: submitted
    to: rejected
    on: Reject
    roles: [manager]
"""

#: the same workflow with the approval's condition forgotten: a manager approves any amount
EXPENSE_WITHOUT_LIMIT = EXPENSE.replace('    condition: "context.amount <= 100"\n', "")


def expense() -> ledgerflow.Definition:
    """The correct expense workflow."""
    return ledgerflow.loads(EXPENSE, "yaml")


def expense_without_limit() -> ledgerflow.Definition:
    """The expense workflow with its planted bug."""
    return ledgerflow.loads(EXPENSE_WITHOUT_LIMIT, "yaml")


def note(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """The ``note`` action: returns its parameters."""
    return dict(params)


def actions() -> ActionRegistry:
    """A registry holding ``note``."""
    registry = ActionRegistry()
    registry.register_simple_action(
        "note", "Note an amount.", [{"name": "amount", "type": "number"}], note
    )
    return registry


def within_limit(observed: Any) -> bool:
    """The expense workflow's promise: nothing above 100 is approved."""
    return all(applied.context["amount"] <= 100 for applied in observed.applied("approve"))
