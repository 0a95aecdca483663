"""The contract of SQLStore.insert_action_result with a lease, for the store's own tests and the
confined role's: a result is recorded only while the caller holds the execution's lease."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import sqlalchemy as sa

from ledgerflow.engine import Engine
from ledgerflow.errors import LeaseLostError
from ledgerflow.store import ALL_TENANTS

TENANT = "acme"


def record(key: str, execution_id: str) -> dict[str, Any]:
    return {
        "key": key,
        "tenant": TENANT,
        "execution_id": execution_id,
        "event_id": "ev-1",
        "step_id": "pay",
        "action": "pay",
        "result": {"paid": 120.5, "note": "ü"},
        "attempts": 1,
    }


def results(engine: Engine, execution_id: str) -> list[tuple[str, Any]]:
    with engine.store.read(tenant=ALL_TENANTS) as conn:
        found = engine.store.action_results_for(conn, execution_id, ["ev-1"], tenant=TENANT)
    return sorted(found.items())


def check_fenced_results(
    engine: Engine, write: Callable[[str], AbstractContextManager[sa.Connection]]
) -> None:
    """The contract, with ``write(tenant)`` the transaction the result is recorded in."""
    x = engine.create_execution("InvoiceApproval", tenant=TENANT)
    token = engine.store.take_lease(x, "w1", 30, tenant=TENANT)
    assert token is not None
    with write(TENANT) as conn:
        engine.store.insert_action_result(conn, lease=("w1", token), **record("k1", x))
    assert results(engine, x) == [("k1", {"paid": 120.5, "note": "ü"})]

    # another owner, or a stale token: nothing recorded, and the transaction refused
    for owner, stale in (("w2", token), ("w1", token - 1)):
        with pytest.raises(LeaseLostError), write(TENANT) as conn:
            engine.store.insert_action_result(conn, lease=(owner, stale), **record("k2", x))
    assert [key for key, _ in results(engine, x)] == ["k1"]

    # the key is unique: a second record under it is refused as a duplicate
    with pytest.raises(sa.exc.IntegrityError), write(TENANT) as conn:
        engine.store.insert_action_result(conn, lease=("w1", token), **record("k1", x))

    # a lease taken over by another worker: the first holder records nothing
    engine.store.release_lease(x, "w1", token)
    assert engine.store.take_lease(x, "w2", 30, tenant=TENANT) == token + 1
    with pytest.raises(LeaseLostError), write(TENANT) as conn:
        engine.store.insert_action_result(conn, lease=("w1", token), **record("k3", x))
    assert [key for key, _ in results(engine, x)] == ["k1"]
