"""Running the steps of an applied transition.

:class:`GraphRunner` runs a transition's steps as a dependency graph, independent steps in
parallel, each under its idempotency key ``execution_id:event_id:step_id``:

- a result recorded under the key is returned and the action is not run again;
- a database action runs inside a transaction at its declared isolation level, and its result
  record is written in that same transaction: its effect happens exactly once;
- any other action runs at least once (again after a crash before its result was recorded)
  and gets the key in its context to pass on to the outside system.

Error strategies: ``stop``: no new step starts, running ones finish, and the execution fails;
``continue``: the failure is recorded, steps that depend on the failed one (directly or not) are
skipped, the others run; ``retry``: tried up to ``attempts`` times with exponential backoff and
jitter (tenacity), then as ``stop``; invalid parameters, unknown actions and failing expressions
are never retried; ``compensate``: as ``stop``, then the compensating action of every completed
step runs, in reverse dependency order, under the key ``…:<step_id>:compensate``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED
from typing import Any, Protocol

import attrs
import sqlalchemy as sa
import tenacity

from ledgerflow.breakers import CircuitBreakers
from ledgerflow.definitions import CompiledStep
from ledgerflow.errors import (
    CircuitOpenError,
    ConfinementError,
    ExpressionError,
    InvalidParametersError,
    LeaseLostError,
    LedgerflowError,
    StoreUnavailableError,
    UnknownActionError,
    UnstorableResultError,
    first_line,
)
from ledgerflow.hookspecs import RetryDecision, StepInfo
from ledgerflow.json_values import unstorable
from ledgerflow.model import JSON, Step
from ledgerflow.plugins import Plugins
from ledgerflow.registry import Action, ActionContext, ActionRegistry
from ledgerflow.store.sql import SQLStore

__all__ = ["GraphRunner", "RunResult", "StepJob", "StepOutcome", "StepRunner", "idempotency_key"]

log = logging.getLogger("ledgerflow.executor")


class _InlinePool(concurrent.futures.Executor):
    """Runs each submitted call at once, in the caller's thread: where a run's steps start
    when it cannot have two at a time (one step, or ``max_parallel`` 1), and where a step
    starts when it is the only one that can run (the caller would only wait for it)."""

    def submit(  # type: ignore[override]
        self, fn: Callable[..., StepOutcome], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[StepOutcome]:
        future: concurrent.futures.Future[StepOutcome] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed over like a pool's future hands it over
            future.set_exception(exc)
        return future


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
    fence: Callable[[sa.Connection], None] | None = None
    """Checks, inside a transaction, that the caller still holds the execution's lease; it
    raises :class:`~ledgerflow.errors.LeaseLostError` otherwise, and nothing commits."""
    lease: tuple[str, int] | None = None
    """The ``(owner, token)`` of the execution's lease the caller holds, instead of
    ``fence``: a result is recorded only while it is held, checked by the very statement
    that records it (one round trip less per step); otherwise
    :class:`~ledgerflow.errors.LeaseLostError` is raised and nothing commits."""
    recorded: Mapping[str, JSON] | None = None
    """The results recorded under this job's keys, by key, if the caller read them (one query
    for the whole event, while holding the lease): a key found there is not read again, and a
    database action whose key is not there runs without a read first (its transaction refuses
    a second result, effect and all). ``None``: every key is read before its action runs.
    Either way a recorded result is returned, never re-run."""
    recorded_until: tuple[float, float] | None = None
    """Deadlines before which ``recorded`` is known to be current, on :func:`time.monotonic`
    and on the store's clock (the one leases expire by): the caller read it in the
    transaction that took the execution's lease, which cannot have passed to another worker
    before then, so no result can have been recorded under the job's keys since but by this
    job. Until both have passed neither, a simple action whose key is missing from
    ``recorded`` runs without a read first, as a database action does; after either (or
    with ``None``) its key is read again before it runs. The store's clock catches a jump
    of the host's clock, the monotonic one a clock set back."""


@attrs.frozen(kw_only=True)
class StepOutcome:
    """How one step ended: ``status`` is ``succeeded``, ``failed`` or ``compensated``."""

    step_id: str
    status: str
    result: JSON = None
    error: str = ""
    attempts: int = 1
    started_at: float = 0.0
    duration: float = 0.0
    unrecorded: Mapping[str, Any] | None = None
    """The result record of a step whose action is not checkpointed
    (:attr:`~ledgerflow.registry.Action.checkpoint`), for the caller to commit with the
    event's records (:meth:`~ledgerflow.store.sql.SQLStore.insert_action_results`): the
    columns of ``lf_action_results`` but the time. ``None``: the result is recorded
    already, or there is none."""


@attrs.frozen(kw_only=True)
class RunResult:
    """The outcomes in the order they happened, and why the execution failed, if it did.

    ``compensated`` says the completed steps were compensated (a failed step asked for it);
    ``compensation_failure`` says why undoing them failed, if it did. A run that failed and
    was wholly compensated leaves nothing done: its transition is to be reverted.
    """

    outcomes: tuple[StepOutcome, ...]
    failure: str | None = None
    compensated: bool = False
    compensation_failure: str | None = None

    @property
    def unrecorded(self) -> list[Mapping[str, Any]]:
        """The result records the caller commits with the event: see
        :attr:`StepOutcome.unrecorded`."""
        return [o.unrecorded for o in self.outcomes if o.unrecorded is not None]


class StepRunner(Protocol):
    """Runs the steps of an applied transition; the engine records what it returns."""

    def run(self, job: StepJob) -> RunResult:
        """Run ``job``'s steps and say how each ended."""
        ...

    def compensate(
        self, job: StepJob, completed: Sequence[str], results: Mapping[str, JSON], failure: str
    ) -> RunResult:
        """Compensate the steps of ``job`` named in ``completed`` (in the order they
        completed; undone last first), after ``failure``."""
        ...


class GraphRunner:
    """Runs a transition's steps as a dependency graph; see the module's documentation.

    A step starts as soon as every step in its ``depends_on`` succeeded, at most
    ``max_parallel`` of one transition at a time, so independent steps run at the same time and
    fork/join shapes follow from ``depends_on``. The threads they run on are the runner's own,
    kept between transitions (several transitions may run at once, from a worker's threads);
    ``async def`` actions run on an event loop this runner owns. :meth:`close` ends both.
    """

    def __init__(
        self,
        store: SQLStore,
        registry: ActionRegistry,
        *,
        max_parallel: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        breakers: CircuitBreakers | None = None,
        plugins: Plugins | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.store = store
        self.registry = registry
        self.max_parallel = max_parallel
        self.sleep = sleep
        self.clock = clock
        self.breakers = breakers if breakers is not None else CircuitBreakers(store, clock=clock)
        self.plugins = plugins if plugins is not None else Plugins(entry_points=False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _steps_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads steps run on, started on first use. A thread is made only when none is
        idle and kept for the next step; the bound is far above what the transitions running
        at once use (each keeps to ``max_parallel``), so a step that waits (a retry's pause, a
        slow call, a nested run) never holds back another transition's steps."""
        with self._loop_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_STEP_THREADS, thread_name_prefix="ledgerflow-step"
                )
            return self._pool

    def close(self) -> None:
        """Stop the step threads (after the steps running finish) and the event loop of
        ``async def`` actions, if they were started."""
        with self._loop_lock:
            loop, thread = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def run(self, job: StepJob) -> RunResult:
        """Run ``job``'s steps; see the module's documentation for the strategies."""
        by_id = {cs.step.id: cs for cs in job.steps}
        waiting = {cs.step.id: set(cs.step.depends_on) for cs in job.steps}
        outcomes: list[StepOutcome] = []
        results: dict[str, Any] = {}
        completed: list[CompiledStep] = []
        blocked: set[str] = set()
        failure: str | None = None
        compensate = False
        parallel = min(self.max_parallel, len(job.steps)) > 1
        inline = _InlinePool()
        running: dict[concurrent.futures.Future[StepOutcome], CompiledStep] = {}

        def start_ready() -> None:
            ready = [s for s, deps in waiting.items() if not deps]
            # the rest start as these finish
            ready = ready[: max(self.max_parallel - len(running), 0)]
            for step_id in ready:
                del waiting[step_id]
                compiled = by_id[step_id]
                variables = {
                    **job.variables,
                    "steps": {k: {"result": v} for k, v in results.items()},
                    "execution": {"id": job.execution_id, "tenant": job.tenant},
                }
                # each step runs in the caller's context: its tenant scope, above all
                call = contextvars.copy_context().run
                # a step that is the only one that can run goes in this thread, which would
                # only wait for it: a chain of steps needs no thread but this one (with
                # others running, it would hold back what their ends make ready)
                alone = len(ready) == 1 and not running
                runner = self._steps_pool() if parallel and not alone else inline
                running[runner.submit(call, self._run_step, job, compiled, variables)] = compiled

        try:
            start_ready()
            while running:
                done, _ = concurrent.futures.wait(running, return_when=FIRST_COMPLETED)
                # settle finished steps in the order written, so equal runs record alike
                for future in sorted(done, key=lambda f: job.steps.index(running[f])):
                    compiled = running.pop(future)
                    outcome = future.result()
                    outcomes.append(outcome)
                    step = compiled.step
                    if outcome.status == "succeeded":
                        results[step.id] = outcome.result
                        completed.append(compiled)
                        for deps in waiting.values():
                            deps.discard(step.id)
                        continue
                    if step.on_error.strategy == "continue":
                        blocked |= _dependents(step.id, waiting)
                        for skipped in blocked:
                            waiting.pop(skipped, None)
                        continue
                    if failure is None:
                        failure = f"step {step.id!r} failed: {outcome.error}"
                    # any failed step that asks for compensation gets it, whichever failed first
                    compensate = compensate or step.on_error.strategy == "compensate"
                    waiting.clear()  # stop: nothing new starts; running steps finish
                if failure is None:
                    start_ready()
        except BaseException:
            # the steps already started finish before the error goes up: nothing of this run
            # is left writing behind the caller's back
            concurrent.futures.wait(running)
            raise
        if compensate:
            assert failure is not None
            undone = self.compensate(job, [c.step.id for c in completed], results, failure)
            return attrs.evolve(undone, outcomes=(*outcomes, *undone.outcomes))
        return RunResult(outcomes=tuple(outcomes), failure=failure)

    def _run_step(
        self, job: StepJob, compiled: CompiledStep, variables: Mapping[str, Any]
    ) -> StepOutcome:
        step = compiled.step
        key = idempotency_key(job.execution_id, job.event_id, step.id)
        info = StepInfo(
            execution_id=job.execution_id,
            tenant=job.tenant,
            event_id=job.event_id,
            step_id=step.id,
            action=step.action,
            key=key,
        )
        started_at, started = self.clock(), time.monotonic()
        retrying = step.on_error.strategy == "retry"
        backoff = step.on_error.backoff
        attempts = 0
        decisions: dict[int, RetryDecision] = {}

        # the result record an action that is not checkpointed leaves for the event's commit
        late: list[dict[str, Any]] = []

        def attempt() -> JSON:
            nonlocal attempts
            attempts += 1
            late.clear()
            params = compiled.params.render(variables)
            return self._call(job, step, step.action, params, key, attempts, late)

        def worth_retrying(state: tenacity.RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            if error is None or not _worth_retrying(error):
                return False
            if not retrying or state.attempt_number >= step.on_error.attempts:
                return False  # tenacity asks before it applies stop: no policy is asked then
            decision = self.plugins.decide(
                "ledgerflow_retry_policy",
                action=step.action,
                error=error,
                attempt=state.attempt_number,
            )
            if isinstance(decision, RetryDecision):
                decisions[state.attempt_number] = decision
                return decision.retry
            return True

        exponential = (
            tenacity.wait_exponential_jitter(
                multiplier=backoff.initial,
                max=backoff.maximum,
                exp_base=backoff.multiplier,
                jitter=backoff.initial,
            )
            if retrying
            else tenacity.wait_none()
        )

        def wait(state: tenacity.RetryCallState) -> float:
            decision = decisions.get(state.attempt_number)
            if decision is not None and decision.wait is not None:
                return decision.wait
            return float(exponential(state))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            wait_for = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "step %s of execution %s failed (attempt %d), retrying in %.2fs: %s",
                step.id,
                job.execution_id,
                state.attempt_number,
                wait_for,
                error,
            )
            self.plugins.notify(
                "ledgerflow_step_retried",
                step=info,
                error=_describe(error) if error else "",
                attempt=state.attempt_number,
                wait=wait_for,
            )

        # a step that is not retried is simply called: tenacity would call it once and
        # raise what it raised
        policy = (
            tenacity.Retrying(
                stop=tenacity.stop_after_attempt(step.on_error.attempts),
                wait=wait,
                retry=worth_retrying,
                sleep=self.sleep,
                reraise=True,
                before_sleep=before_sleep,
            )
            if retrying
            else None
        )
        self.plugins.notify("ledgerflow_step_started", step=info)
        try:
            result = attempt() if policy is None else policy(attempt)
        except _NOT_THE_ACTIONS:
            raise
        except Exception as exc:  # an action's failure is data: it is recorded, not raised
            if isinstance(exc, CircuitOpenError) and exc.when_open == "delay":
                raise  # the event is held back until the circuit admits a trial
            failed = StepOutcome(
                step_id=step.id,
                status="failed",
                error=_describe(exc),
                attempts=attempts,
                started_at=started_at,
                duration=time.monotonic() - started,
            )
            self.plugins.notify(
                "ledgerflow_step_failed",
                step=info,
                error=failed.error,
                attempts=attempts,
                duration=failed.duration,
            )
            return failed
        succeeded = StepOutcome(
            step_id=step.id,
            status="succeeded",
            result=result,
            attempts=attempts,
            started_at=started_at,
            duration=time.monotonic() - started,
            unrecorded=late[-1] if late else None,
        )
        self.plugins.notify(
            "ledgerflow_step_succeeded",
            step=info,
            result=result,
            attempts=attempts,
            duration=succeeded.duration,
        )
        return succeeded

    def compensate(
        self, job: StepJob, completed: Sequence[str], results: Mapping[str, JSON], failure: str
    ) -> RunResult:
        """Undo the completed steps named in ``completed``, the last completed first (a step
        completes after every step it depends on, so this is reverse dependency order), each
        through its compensating action, or, for a step that declares none, through the
        ``ledgerflow_compensate`` hook, under the key ``…:<step_id>:compensate``. A step
        neither undoes is left as it is. Every compensation is attempted even when one fails;
        a compensation already recorded is not run again."""
        by_id = {cs.step.id: cs for cs in job.steps}
        outcomes = []
        problems = []
        variables = {
            **job.variables,
            "steps": {k: {"result": v} for k, v in results.items()},
            "execution": {"id": job.execution_id, "tenant": job.tenant},
        }
        hooked = self.plugins.has("ledgerflow_compensate")
        for step_id in reversed(completed):
            compiled = by_id[step_id]
            step = compiled.step
            declared = step.compensate is not None and compiled.compensate_params is not None
            if not declared and not hooked:
                continue
            key = idempotency_key(job.execution_id, job.event_id, step.id, compensation=True)
            info = StepInfo(
                execution_id=job.execution_id,
                tenant=job.tenant,
                event_id=job.event_id,
                step_id=step.id,
                action=step.compensate.action if step.compensate else step.action,
                key=key,
                compensation=True,
            )
            started_at, started = self.clock(), time.monotonic()
            try:
                if declared:
                    assert step.compensate is not None
                    assert compiled.compensate_params is not None
                    self.plugins.notify("ledgerflow_step_started", step=info)
                    params = compiled.compensate_params.render(variables)
                    late: list[dict[str, Any]] = []
                    result = self._call(job, step, step.compensate.action, params, key, 1, late)
                    unrecorded = late[-1] if late else None
                else:
                    unrecorded = None
                    found, result = self._hook_compensation(
                        job, info, results.get(step_id), variables
                    )
                    if not found:
                        continue  # no plugin knows how to undo it: left as it is
                    # a plugin undid it: observers see it start and end like any other
                    self.plugins.notify("ledgerflow_step_started", step=info)
            except _NOT_THE_ACTIONS:
                raise
            except Exception as exc:
                if isinstance(exc, CircuitOpenError) and exc.when_open == "delay":
                    raise  # the event is held back until the circuit admits a trial
                problems.append(f"compensating step {step.id!r} failed: {_describe(exc)}")
                outcomes.append(
                    StepOutcome(
                        step_id=step.id,
                        status="failed",
                        error=f"compensation: {_describe(exc)}",
                        started_at=started_at,
                        duration=time.monotonic() - started,
                    )
                )
                self.plugins.notify(
                    "ledgerflow_step_failed",
                    step=info,
                    error=outcomes[-1].error,
                    attempts=1,
                    duration=outcomes[-1].duration,
                )
                continue
            outcomes.append(
                StepOutcome(
                    step_id=step.id,
                    status="compensated",
                    result=result,
                    started_at=started_at,
                    duration=time.monotonic() - started,
                    unrecorded=unrecorded,
                )
            )
            self.plugins.notify("ledgerflow_step_compensated", step=info, result=result)
        return RunResult(
            outcomes=tuple(outcomes),
            failure=failure,
            compensated=True,
            compensation_failure="; ".join(problems) or None,
        )

    def _hook_compensation(
        self, job: StepJob, info: StepInfo, result: JSON, variables: Mapping[str, Any]
    ) -> tuple[bool, JSON]:
        """Undo a step that declares no compensating action through the plugins' hook, once
        per key: ``(False, None)`` when no plugin knows how."""
        with _store_errors(), self.store.read(tenant=job.tenant) as conn:
            found, recorded = self.store.action_result(conn, info.key)
        if found:
            return True, recorded
        undone = self.plugins.manager.hook.ledgerflow_compensate(
            step=info, result=result, context=dict(variables)
        )
        if undone is None:
            return False, None
        _check_storable("ledgerflow_compensate", undone)
        record = {
            "key": info.key,
            "tenant": job.tenant,
            "execution_id": job.execution_id,
            "event_id": job.event_id,
            "step_id": info.step_id,
            "action": "ledgerflow_compensate",
            "attempts": 1,
        }
        return True, self._record(job, info.key, undone, record)

    def _call(
        self,
        job: StepJob,
        step: Step,
        name: str,
        params: JSON,
        key: str,
        attempt: int,
        late: list[dict[str, Any]],
    ) -> JSON:
        """The result of ``name`` under ``key``: the one recorded, or the action's, run now
        and recorded (or, for an action that is not checkpointed, its record put in
        ``late`` for the event's commit)."""
        if job.recorded is not None and key in job.recorded:
            return job.recorded[key]
        known = self.registry.get(name) if name in self.registry else None
        until = job.recorded_until
        current = (
            until is not None and time.monotonic() < until[0] and self.store.clock() < until[1]
        )
        if job.recorded is None or known is None or (known.kind != "database" and not current):
            # read now: a result read earlier may be stale if the lease was taken over since,
            # and only a database action's own transaction refuses a second result (with its
            # effect) by itself
            with _store_errors(), self.store.read(tenant=job.tenant) as conn:
                found, recorded = self.store.action_result(conn, key)
            if found:
                return recorded
        action = self.registry.get(name)
        validated = action.validate(params)
        if action.breaker is None:
            return self._call_action(job, step, action, validated, key, attempt, late)
        verdict = None
        if self.plugins.has("ledgerflow_circuit_breaker"):
            verdict = self.plugins.decide(
                "ledgerflow_circuit_breaker", action=name, state=self.breakers.state(name)
            )
        if verdict == "refuse":
            raise CircuitOpenError(
                name,
                retry_after=action.breaker.reset_after,
                when_open=action.breaker.when_open,
                last_error="refused by a plugin's ledgerflow_circuit_breaker hook",
            )
        if verdict != "allow":
            self.breakers.admit(action.name, action.breaker)
        try:
            result = self._call_action(job, step, action, validated, key, attempt, late)
        except UnstorableResultError:
            self.breakers.success(action.name, action.breaker)  # the dependency did answer
            raise
        except (*_NOT_THE_ACTIONS, *_PERMANENT):
            raise  # the engine's trouble, or one trying again cannot mend: not the dependency's
        except Exception as exc:
            self.breakers.failure(action.name, action.breaker, _describe(exc))
            raise
        self.breakers.success(action.name, action.breaker)
        return result

    def _call_action(
        self,
        job: StepJob,
        step: Step,
        action: Action,
        validated: Any,
        key: str,
        attempt: int,
        late: list[dict[str, Any]],
    ) -> JSON:
        """Run ``action`` (its parameters validated) and record its result under ``key``."""
        name = action.name
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
            return self._call_in_transaction(job, step, action, validated, key, attempt, record)
        context = self._context(job, step, key, attempt, None)
        result = self._invoke(action, validated, context)
        # a result the ledger cannot hold fails the step here, the same on every database,
        # instead of the write that records it (the event's commit, when not checkpointed)
        _check_storable(name, result)
        if not action.checkpoint:
            # recorded with the event's commit, which checks the lease as it does
            late.append({**record, "result": result})
            return result
        return self._record(job, key, result, record)

    def _call_in_transaction(
        self,
        job: StepJob,
        step: Step,
        action: Action,
        validated: Any,
        key: str,
        attempt: int,
        record: dict[str, Any],
    ) -> JSON:
        """Run a database action and record its result in one transaction, retrying the whole
        transaction on a serialization failure, a deadlock or a busy database."""
        assert action.isolation is not None
        for retry in range(_TRANSACTION_RETRIES):
            try:
                with self.store.action_write(action.isolation.value, tenant=job.tenant) as conn:
                    context = self._context(job, step, key, attempt, conn)
                    result = self._invoke(action, validated, context)
                    # raised inside the transaction: the action's writes roll back with it
                    _check_storable(action.name, result)
                    self._insert_result(job, conn, result, record)
                return result
            except sa.exc.IntegrityError:
                # two runners raced on this key: the committed one is the result (and effect)
                with _store_errors(), self.store.read(tenant=job.tenant) as conn:
                    found, recorded = self.store.action_result(conn, key)
                if found:
                    return recorded
                raise
            except sa.exc.DBAPIError as exc:
                if not _transient(exc):
                    raise
                log.info("step %s: transaction retried after %s", step.id, first_line(exc))
                self.sleep(min(0.05 * 2**retry, 2.0))
        raise StoreUnavailableError(
            f"step {step.id}: the database kept refusing the transaction "
            f"({_TRANSACTION_RETRIES} tries)"
        )

    def _record(self, job: StepJob, key: str, result: JSON, record: dict[str, Any]) -> JSON:
        """Record a plain action's result; the first result recorded under a key wins."""
        try:
            with _store_errors(), self.store.write(tenant=job.tenant) as conn:
                self._insert_result(job, conn, result, record)
        except sa.exc.IntegrityError:
            with _store_errors(), self.store.read(tenant=job.tenant) as conn:
                _, result = self.store.action_result(conn, key)
        return result

    def _insert_result(
        self, job: StepJob, conn: sa.Connection, result: JSON, record: dict[str, Any]
    ) -> None:
        """Inside ``conn``'s transaction: record ``result`` if the caller still holds the
        lease (:class:`~ledgerflow.errors.LeaseLostError` otherwise)."""
        if job.lease is None and job.fence is not None:
            job.fence(conn)
        self.store.insert_action_result(conn, result=result, lease=job.lease, **record)

    def _invoke(self, action: Action, params: Any, context: ActionContext) -> JSON:
        """One attempt of ``action``, through the plugins' ``ledgerflow_run_step`` wrappers."""
        info = StepInfo(
            execution_id=context.execution_id,
            tenant=context.tenant,
            event_id=context.event_id,
            step_id=context.step_id,
            action=action.name,
            key=context.idempotency_key,
            compensation=context.idempotency_key.endswith(":compensate"),
        )
        return self.plugins.run_step(
            info, params, lambda: self._invoke_action(action, params, context)
        )

    def _invoke_action(self, action: Action, params: Any, context: ActionContext) -> JSON:
        if action.is_async:
            coroutine = action.fn(params, context)
            return asyncio.run_coroutine_threadsafe(coroutine, self._event_loop()).result()
        result = action.fn(params, context)
        if inspect.isawaitable(result):
            raise LedgerflowError(
                f"action {action.name!r} returned an awaitable from a plain function; "
                "declare it async def"
            )
        return result

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="ledgerflow-async-actions", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

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


_PERMANENT = (InvalidParametersError, UnknownActionError, ExpressionError, UnstorableResultError)
"""Failures that trying again cannot mend: they fail the step at once."""

_NOT_THE_ACTIONS = (StoreUnavailableError, LeaseLostError, ConfinementError)
"""Failures of the engine, not of the action: they are raised, never recorded as a step's
failure, and the event stays pending to be processed again."""

_TRANSACTION_RETRIES = 8

_STEP_THREADS = 1024
"""The most threads a runner's steps use at once, over all its transitions."""


def _worth_retrying(exc: BaseException) -> bool:
    """Whether a step's ``retry`` strategy tries again after ``exc``: not for a failure that
    trying again cannot mend, one of the engine's own, or an open circuit that delays."""
    if isinstance(exc, CircuitOpenError):
        return exc.when_open == "fail"
    return not isinstance(exc, (*_PERMANENT, *_NOT_THE_ACTIONS))


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """A serialization failure, a deadlock, a busy or locked SQLite database, a lost
    connection, a statement cancelled from another session: the same transaction may well
    succeed if tried again."""
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in ("40001", "40P01"):
        return True
    text = str(exc.orig).lower()
    if sqlstate == "57014" and "user request" in text:
        return True  # cancelled from another session (not a statement timeout): try again
    return isinstance(exc, sa.exc.OperationalError) and ("locked" in text or "busy" in text)


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """The store's own operations: a database error there is the engine's trouble."""
    try:
        yield
    except sa.exc.IntegrityError:
        raise
    except sa.exc.SQLAlchemyError as exc:
        raise StoreUnavailableError(f"the ledger's database failed: {first_line(exc)}") from exc


def _check_storable(action: str, result: Any) -> None:
    """Raise :class:`UnstorableResultError` unless ``result`` is JSON the ledger can store on
    any database (:func:`~ledgerflow.json_values.unstorable`)."""
    problem = unstorable(result)
    if problem is None:
        return
    kind, detail = problem
    said = {
        "not_json": f"a result that is not JSON: {detail}",
        "too_deep": "a result nested too deeply to be stored",
        "nul": "a string holding a NUL character",
        "not_unicode": f"text that is not Unicode ({detail})",
    }[kind]
    raise UnstorableResultError(f"action {action!r} returned {said}")


def _describe(exc: BaseException) -> str:
    # a NUL cannot be stored in PostgreSQL text: show it instead
    return f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")


def _dependents(step_id: str, waiting: Mapping[str, set[str]]) -> set[str]:
    """Every waiting step that needs ``step_id``, directly or through another."""
    found: set[str] = set()
    frontier = {step_id}
    while frontier:
        frontier = {s for s, deps in waiting.items() if deps & frontier and s not in found}
        found |= frontier
    return found
