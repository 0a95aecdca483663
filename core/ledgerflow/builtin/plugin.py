"""ledgerflow's own plugin: the built-in actions, the ``log`` notifier, the SQL stores and the
database transport, registered through the same hooks as any other plugin's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ledgerflow import logs
from ledgerflow.builtin.actions import (
    register_builtin_actions,
    register_emit_event,
    register_schedule_event,
)
from ledgerflow.hookspecs import StepInfo, hookimpl
from ledgerflow.model import JSON
from ledgerflow.notifiers import LogNotifier, Notifier
from ledgerflow.registry import ActionRegistry
from ledgerflow.store.sql import SQLStore
from ledgerflow.transports import DatabaseTransport, Transport

if TYPE_CHECKING:
    from ledgerflow.engine import Engine


@hookimpl
def ledgerflow_register_actions(registry: ActionRegistry, engine: Engine) -> None:
    """The built-in actions; ``ledgerflow.notify`` sends through the engine's notifiers."""
    register_builtin_actions(registry, engine.notifiers)
    register_emit_event(registry, engine)
    register_schedule_event(registry, engine)


@hookimpl
def ledgerflow_register_notifiers(notifiers: dict[str, Notifier]) -> None:
    """The ``log`` notifier."""
    notifiers["log"] = LogNotifier()


@hookimpl
def ledgerflow_register_stores(stores: dict[str, Callable[..., SQLStore]]) -> None:
    """SQLite and PostgreSQL, through SQLAlchemy."""
    stores["sqlite"] = SQLStore
    stores["postgresql"] = SQLStore


@hookimpl
def ledgerflow_register_transports(
    transports: dict[str, Callable[[str, Engine], Transport]],
) -> None:
    """The store's own outbox, with PostgreSQL ``NOTIFY`` wake-ups."""
    transports["database"] = DatabaseTransport


@hookimpl(trylast=True)
def ledgerflow_run_step(step: StepInfo, call: Callable[[], JSON], params: Any) -> JSON:
    """Run the attempt: every wrapper a plugin adds runs around this. What the action logs
    carries the step's execution, event, tenant and step id."""
    with logs.bound(
        execution_id=step.execution_id,
        event_id=step.event_id,
        tenant=step.tenant,
        step_id=step.step_id,
    ):
        return call()
