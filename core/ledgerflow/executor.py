"""Running the steps of an applied transition.

:class:`SequentialRunner` runs a transition's steps one at a time, dependencies first, each under
its idempotency key ``execution_id:event_id:step_id``:

- a result recorded under the key is returned and the action is not run again;
- a database action runs inside a transaction at its declared isolation level, and its result
  record is written in that same transaction: its effect happens exactly once;
- any other action runs at least once (again after a crash before its result was recorded)
  and gets the key in its context to pass on to the outside system.

Error strategies: ``stop`` ends the transition and fails the execution; ``continue`` records the
failure, skips the steps that depend on the failed one and goes on; ``retry`` tries again up to
``attempts`` times with exponential backoff, then fails as ``stop``; ``compensate`` runs the
compensating action of every completed step, newest first, and fails the execution.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import sqlalchemy as sa

from ledgerflow.definitions import CompiledStep
from ledgerflow.errors import (
    ExpressionError,
    InvalidParametersError,
    LedgerflowError,
    UnknownActionError,
)
from ledgerflow.model import JSON, Step
from ledgerflow.registry import Action, ActionContext, ActionRegistry
from ledgerflow.store.sql import SQLStore

__all__ = ["SequentialRunner", "StepJob", "StepOutcome", "StepRunner", "idempotency_key"]

log = logging.getLogger("ledgerflow.executor")


def idempotency_key(
    execution_id: str, event_id: str, step_id: str, *, compensation: bool = False
) -> str:
    """The key a step runs under; stable across retries, redeliveries and workers."""
    key = f"{execution_id}:{event_id}:{step_id}"
    return f"{key}:compensate" if compensation else key


@attrs.frozen(kw_only=True)
class StepJob:
    """Everything needed to run one applied transition's steps."""

    execution_id: str
    tenant: str
    event_id: str
    steps: tuple[CompiledStep, ...]
    variables: Mapping[str, Any]


@attrs.frozen(kw_only=True)
class StepOutcome:
    """How one step ended: ``status`` is ``succeeded``, ``failed`` or ``compensated``."""

    step_id: str
    status: str
    result: JSON = None
    error: str = ""
    attempts: int = 1


@attrs.frozen(kw_only=True)
class RunResult:
    """The outcomes in the order they happened, and why the execution failed, if it did."""

    outcomes: tuple[StepOutcome, ...]
    failure: str | None = None


class StepRunner(Protocol):
    """Runs the steps of an applied transition; the engine records what it returns."""

    def run(self, job: StepJob) -> RunResult:
        """Run ``job``'s steps and say how each ended."""
        ...


class SequentialRunner:
    """Runs steps one at a time in dependency order; see the module's documentation."""

    def __init__(
        self,
        store: SQLStore,
        registry: ActionRegistry,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.registry = registry
        self.sleep = sleep

    def run(self, job: StepJob) -> RunResult:
        """Run ``job``'s steps; see the module's documentation for the strategies."""
        outcomes: list[StepOutcome] = []
        results: dict[str, Any] = {}
        failed: set[str] = set()
        completed: list[CompiledStep] = []
        for compiled in job.steps:
            step = compiled.step
            if any(dep in failed for dep in step.depends_on):
                failed.add(step.id)  # skipped: a step it needs did not succeed
                continue
            variables = {
                **job.variables,
                "steps": {k: {"result": v} for k, v in results.items()},
                "execution": {"id": job.execution_id, "tenant": job.tenant},
            }
            outcome = self._run_step(job, compiled, variables)
            outcomes.append(outcome)
            if outcome.status == "succeeded":
                results[step.id] = outcome.result
                completed.append(compiled)
                continue
            failed.add(step.id)
            strategy = step.on_error.strategy
            if strategy == "continue":
                continue
            if strategy == "compensate":
                outcomes += self._compensate(job, completed, variables)
            return RunResult(
                outcomes=tuple(outcomes),
                failure=f"step {step.id!r} failed: {outcome.error}",
            )
        return RunResult(outcomes=tuple(outcomes))

    def _run_step(
        self, job: StepJob, compiled: CompiledStep, variables: Mapping[str, Any]
    ) -> StepOutcome:
        step = compiled.step
        key = idempotency_key(job.execution_id, job.event_id, step.id)
        attempts = step.on_error.attempts if step.on_error.strategy == "retry" else 1
        delay = step.on_error.backoff.initial
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                params = compiled.params.render(variables)
                result = self._call(job, step, step.action, params, key, attempt)
                return StepOutcome(
                    step_id=step.id, status="succeeded", result=result, attempts=attempt
                )
            except (InvalidParametersError, UnknownActionError, ExpressionError) as exc:
                # bad input never gets better by trying again
                return StepOutcome(
                    step_id=step.id,
                    status="failed",
                    error=f"{type(exc).__name__}: {exc}",
                    attempts=attempt,
                )
            except Exception as exc:  # an action's failure is data: it is recorded, not raised
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "step %s of execution %s failed (attempt %d): %s",
                    step.id,
                    job.execution_id,
                    attempt,
                    error,
                )
            if attempt < attempts:
                self.sleep(min(delay, step.on_error.backoff.maximum))
                delay *= step.on_error.backoff.multiplier
        return StepOutcome(step_id=step.id, status="failed", error=error, attempts=attempts)

    def _compensate(
        self, job: StepJob, completed: list[CompiledStep], variables: Mapping[str, Any]
    ) -> list[StepOutcome]:
        outcomes = []
        for compiled in reversed(completed):
            step = compiled.step
            if step.compensate is None or compiled.compensate_params is None:
                continue
            key = idempotency_key(job.execution_id, job.event_id, step.id, compensation=True)
            try:
                params = compiled.compensate_params.render(variables)
                result = self._call(job, step, step.compensate.action, params, key, 1)
                outcomes.append(StepOutcome(step_id=step.id, status="compensated", result=result))
            except Exception as exc:
                outcomes.append(
                    StepOutcome(
                        step_id=step.id,
                        status="failed",
                        error=f"compensation: {type(exc).__name__}: {exc}",
                    )
                )
        return outcomes

    def _call(
        self, job: StepJob, step: Step, name: str, params: JSON, key: str, attempt: int
    ) -> JSON:
        with self.store.read() as conn:
            found, recorded = self.store.action_result(conn, key)
        if found:
            return recorded
        action = self.registry.get(name)
        validated = action.validate(params)
        record: dict[str, Any] = {
            "key": key,
            "tenant": job.tenant,
            "execution_id": job.execution_id,
            "event_id": job.event_id,
            "step_id": step.id,
            "action": name,
            "attempts": attempt,
        }
        if action.kind == "database":
            assert action.isolation is not None  # the registry requires one for database actions
            with self.store.write(action.isolation.value) as conn:
                context = self._context(job, step, key, attempt, conn)
                result = _invoke(action, validated, context)
                self.store.insert_action_result(conn, result=result, **record)
            return result
        context = self._context(job, step, key, attempt, None)
        result = _invoke(action, validated, context)
        try:
            with self.store.write() as conn:
                self.store.insert_action_result(conn, result=result, **record)
        except sa.exc.IntegrityError:
            # another worker recorded a result first: that one is the result
            with self.store.read() as conn:
                _, result = self.store.action_result(conn, key)
        return result

    @staticmethod
    def _context(
        job: StepJob, step: Step, key: str, attempt: int, conn: sa.Connection | None
    ) -> ActionContext:
        return ActionContext(
            idempotency_key=key,
            execution_id=job.execution_id,
            tenant=job.tenant,
            event_id=job.event_id,
            step_id=step.id,
            attempt=attempt,
            connection=conn,
        )


def _invoke(action: Action, params: Any, context: ActionContext) -> JSON:
    if action.is_async:
        return asyncio.run(action.fn(params, context))
    result = action.fn(params, context)
    if inspect.isawaitable(result):
        raise LedgerflowError("a plain function returned an awaitable; declare it async def")
    return result
