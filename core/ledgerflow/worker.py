"""The worker: takes executions with pending events, one lease at a time, and processes them.

Wake-ups come from the transport (by default the database's outbox; on PostgreSQL a
``LISTEN`` wakes idle workers at once). A periodic sweep of undecided events finds work whose
wake-up was lost, and due timers are fired (their events appended) every poll interval.
Each execution is processed under a lease that is renewed while work runs and
checked at every commit; a lease left by a killed worker expires and is taken over.

``stop()`` (or SIGTERM / SIGINT in ``ledgerflow worker``) lets each thread finish the event in
hand, releases the leases, and returns; nothing is half-recorded.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence

import attrs
import sqlalchemy as sa

from ledgerflow import logs
from ledgerflow.engine import Engine, Lease
from ledgerflow.errors import (
    CircuitOpenError,
    ExecutionNotFoundError,
    LeaseLostError,
    LedgerflowError,
    StoreUnavailableError,
    first_line,
)
from ledgerflow.transports import BrokerTransport, Delivery, Wakeup

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("ledgerflow.worker")


@attrs.define(kw_only=True)
class WorkerStats:
    """What a worker did: executions taken, events processed, errors met."""

    executions: int = 0
    events: int = 0
    errors: int = 0
    leases_lost: int = 0
    dead_letters: int = 0
    relayed: int = 0
    timers: int = 0


class Worker:
    """Processes pending events of ``engine``'s store with ``concurrency`` threads.

    ``lease_ttl`` is how long a lease lives without renewal (a killed worker's executions are
    taken over after it); ``poll_interval`` how long an idle thread waits for a wake-up before
    looking again; ``sweep_interval`` how often undecided events are swept for lost wake-ups.
    ``broker`` is the transport's URL (default: the engine's, see :class:`Engine`): with a
    broker transport, the worker acts on the wake-ups it receives, acknowledges them once
    their outcome is committed, dead-letters the ones that do not parse or keep coming back,
    and relays wake-ups left unhandled ``relay_after`` seconds after their commit. Every
    ``heartbeat_interval`` seconds it records a heartbeat (``ledgerflow workers``). Due
    timers are fired every ``timer_interval`` seconds (default: ``poll_interval``), by
    whichever thread comes first; their events are then processed like any other.

    ``tenant_limit`` caps how many executions of one tenant the workers sharing the database
    work on at once (counted over their live leases; an execution held back after a failure
    does not count), so one noisy tenant cannot take every worker: the tenant holding the
    fewest executions is served first, and a received wake-up of a tenant at its limit is
    acknowledged and left to the outbox relay, which sends it again after ``relay_after``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int = 1,
        lease_ttl: float = 30.0,
        poll_interval: float = 0.5,
        sweep_interval: float = 5.0,
        name: str | None = None,
        broker: str | None = None,
        relay_after: float = 2.0,
        heartbeat_interval: float = 5.0,
        health_file: str | None = None,
        timer_interval: float | None = None,
        tenant_limit: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        # written so that NaN fails too: a lease that expires at NaN never expires
        if not (0 < lease_ttl < math.inf and 0 < poll_interval < math.inf):
            raise ValueError("lease_ttl and poll_interval must be positive and finite")
        if tenant_limit is not None and tenant_limit < 1:
            raise ValueError("tenant_limit must be at least 1")
        if engine.store.in_memory:
            raise ValueError(
                "an in-memory SQLite database has a single connection and cannot serve a "
                "worker's threads; use a file (sqlite:///path.db)"
            )
        self.engine = engine
        self.store = engine.store
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.timer_interval = poll_interval if timer_interval is None else timer_interval
        self.tenant_limit = tenant_limit
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # the engine's transport is the engine's to close; one built here is this worker's
        self._owns_transport = broker is not None
        self.transport = (
            engine.transport if broker is None else engine.plugins.transport_for(broker, engine)
        )
        self.broker = self.transport if isinstance(self.transport, BrokerTransport) else None
        self.broker_scheme = (broker or engine.broker).split(":", 1)[0]
        self.relay_after = relay_after
        self.relay_interval = min(1.0, relay_after)
        self.heartbeat_interval = heartbeat_interval
        self.health_file = health_file
        self.stats = WorkerStats()
        self._started_at = time.time()
        self._last_error: dict[str, str] = {}
        self._broker_failures = 0
        self._broker_retry_at = 0.0
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._wake = threading.Event()
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._busy = 0
        self._idle_passes = 0
        self._last_sweep = 0.0
        self._last_timers: float | None = None
        self._firing = False

    # ----------------------------------------------------------------------------------------

    @property
    def failing(self) -> list[str]:
        """Executions whose processing failed on this worker and was not yet retried with
        success (each is retried after a growing pause)."""
        with self._lock:
            return list(self._failures)

    @property
    def held(self) -> list[str]:
        """Executions this worker holds the lease of and is processing now."""
        with self._lock:
            return list(self._held)

    def stop(self) -> None:
        """Ask every thread to finish the event in hand and return. Safe in a signal handler:
        it only sets flags (plugins hear of it from the thread running :meth:`run`)."""
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def run(self, *, until_idle: bool = False) -> WorkerStats:
        """Process work until :meth:`stop`, or, with ``until_idle``, until no work is left."""
        self.store.check_schema()
        threads = [
            threading.Thread(
                target=self._loop, args=(until_idle,), name=f"ledgerflow-worker-{i}", daemon=True
            )
            for i in range(self.concurrency)
        ]
        helpers = [
            threading.Thread(
                target=self._renew_leases, name="ledgerflow-lease-renewer", daemon=True
            )
        ]
        if self.broker is not None:
            helpers.append(
                threading.Thread(target=self._relay, name="ledgerflow-relay", daemon=True)
            )
        elif not until_idle:
            helpers.append(
                threading.Thread(target=self._listen, name="ledgerflow-listener", daemon=True)
            )
        helpers.append(
            threading.Thread(target=self._heartbeat, name="ledgerflow-heartbeat", daemon=True)
        )
        self._started_at = time.time()
        try:
            self._beat()
        except Exception as exc:  # a heartbeat is for operators: never a reason not to work
            log.warning("worker %s: heartbeat: %s", self.id, exc)
        self.engine.plugins.notify(
            "ledgerflow_worker_started", worker_id=self.id, concurrency=self.concurrency
        )
        log.info("worker %s started with %d threads", self.id, self.concurrency)
        for thread in [*threads, *helpers]:
            thread.start()
        told = False
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
                    if self._stopping.is_set() and not told:
                        told = True
                        self.engine.plugins.notify("ledgerflow_worker_stopping", worker_id=self.id)
        finally:
            self.stop()
            if not told:
                self.engine.plugins.notify("ledgerflow_worker_stopping", worker_id=self.id)
            # leases are renewed until the last event in hand is committed
            self._finished.set()
            for thread in helpers:
                thread.join(timeout=5)
            if self._owns_transport:  # after the relay thread, which publishes through it
                self.transport.close()
            try:
                self._beat(stopped=True)
            except Exception as exc:
                log.warning("worker %s: last heartbeat: %s", self.id, exc)
        log.info("worker %s stopped: %s", self.id, self.stats)
        return self.stats

    def run_once(self) -> int:
        """Process whatever work is available now, in this thread; returns the number of
        events processed. For scripts and tests."""
        before = self.stats.events
        self._fire_timers(force=True)
        while self._work_once():
            pass
        return self.stats.events - before

    def handle(self, wakeups: Sequence[Wakeup]) -> list[str]:
        """Process the executions of ``wakeups`` (a serverless function's trigger, say), in
        this thread, and return; returns the executions left for later: held by another
        worker (which acts on them itself) or failing (processed again after a pause).

        Each execution is taken under its lease, processed until nothing is left, and given
        up, exactly as a running worker does; a wake-up whose event was processed already
        changes nothing. With no wake-ups, one sweep for undecided events is made instead (a
        cron job's pass), after firing the timers that are due.
        """
        if not wakeups:
            self._fire_timers(force=True)
            found = self.store.pending_executions(self.concurrency * 32)
            wakeups = [Wakeup(execution_id=e, tenant=t, event_id="") for e, t in found]
        left: list[str] = []
        for execution_id in dict.fromkeys(w.execution_id for w in wakeups):
            tenant = next(w.tenant for w in wakeups if w.execution_id == execution_id)
            token = self.store.take_lease(execution_id, self.id, self.lease_ttl, tenant=tenant)
            if token is None or not self._run_leased(execution_id, tenant, token):
                left.append(execution_id)
        return left

    # ----------------------------------------------------------------------------------------

    def _loop(self, until_idle: bool) -> None:
        backoff = self.poll_interval
        while not self._stopping.is_set():
            try:
                worked = self._work_once()
                idle = not worked and until_idle and self._all_idle()
                backoff = self.poll_interval
            except (StoreUnavailableError, sa.exc.SQLAlchemyError) as exc:
                log.warning(
                    "worker %s: database unavailable, retrying in %.1fs: %s", self.id, backoff, exc
                )
                self._count(errors=1)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except Exception:  # a worker thread never dies silently
                log.exception("worker %s: unexpected error; going on", self.id)
                self._count(errors=1)
                self._stopping.wait(backoff)
                continue
            if worked:
                continue
            if idle:
                self.stop()
                return
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _all_idle(self) -> bool:
        with self._lock:
            if self._busy:
                return False
        # nothing in hand here and nothing left anywhere, leased by others or not, except
        # executions that keep failing here
        with self._lock:
            failing = list(self._failures)
        if self.store.has_work(besides=failing):
            return False
        due = self.store.next_due()
        return due is None or due > self.store.clock()

    def _work_once(self) -> bool:
        with self._lock:
            self._busy += 1  # counted busy before claiming, so no thread sees a false idle
        try:
            self._fire_timers()
            claimed = None
            if self.broker is not None and time.monotonic() >= self._broker_retry_at:
                try:
                    received = self._receive()
                except (StoreUnavailableError, sa.exc.SQLAlchemyError):
                    raise
                except Exception as exc:
                    self._broker_down(exc)
                    # meanwhile, work comes from the outbox, as with the database transport
                    claimed = self.store.claim(
                        self.id, self.lease_ttl, tenant_limit=self.tenant_limit
                    )
                else:
                    with self._lock:
                        self._broker_failures = 0
                    if received:
                        return True
            else:
                claimed = self.store.claim(self.id, self.lease_ttl, tenant_limit=self.tenant_limit)
            if claimed is None and time.monotonic() - self._last_sweep >= self.sweep_interval:
                self._last_sweep = time.monotonic()
                claimed = self._sweep()
            if claimed is None or self._stopping.is_set():
                if claimed is not None:
                    self.store.release_lease(claimed[0], self.id, claimed[2])
                return False
            self._run_leased(*claimed)
            return True
        finally:
            with self._lock:
                self._busy -= 1

    def _fire_timers(self, *, force: bool = False) -> int:
        """Fire the due timers, unless another thread is at it or (without ``force``) they
        were fired less than ``timer_interval`` ago; returns how many fired."""
        now = time.monotonic()
        with self._lock:
            if self._firing:
                return 0
            last = self._last_timers
            if not force and last is not None and now - last < self.timer_interval:
                return 0
            self._firing = True
            self._last_timers = now
        try:
            fired = self.engine.fire_due_timers()
        finally:
            with self._lock:
                self._firing = False
        if fired:
            self._count(timers=fired)
            log.info("worker %s: %d timers fired", self.id, fired)
        return fired

    def _broker_down(self, exc: Exception) -> None:
        """The broker failed: try it again after a growing pause (0.5 s, 1 s, … 30 s)."""
        with self._lock:
            self._broker_failures += 1
            wait = min(0.5 * 2 ** (self._broker_failures - 1), 30.0)
            self._broker_retry_at = time.monotonic() + wait
        log.warning(
            "worker %s: the broker failed; claiming from the outbox meanwhile, next try in "
            "%.1fs: %s",
            self.id,
            wait,
            first_line(exc),
        )

    def _receive(self) -> bool:
        """Act on the broker's next wake-up, if one comes within the poll interval; ``True``
        if one came."""
        assert self.broker is not None
        deliveries = self.broker.receive(self.id, count=1, block=self.poll_interval)
        for delivery in deliveries:
            self._deliver(delivery)
        return bool(deliveries)

    def _deliver(self, delivery: Delivery) -> None:
        assert self.broker is not None
        wakeup = delivery.wakeup
        if wakeup is None:
            self._dead_letter(delivery, f"malformed message: {delivery.problem}")
            return
        if delivery.deliveries > self.broker.max_deliveries:
            with self._lock:
                last = self._last_error.get(wakeup.execution_id)
            self._dead_letter(
                delivery,
                f"delivered {delivery.deliveries} times without being acknowledged; "
                f"last error here: {last or 'none seen by this worker'}",
            )
            return
        if self._stopping.is_set():
            return  # not acknowledged: another worker takes it over
        if self.tenant_limit is not None and self.store.tenant_at_limit(
            wakeup.tenant, self.tenant_limit
        ):
            # acknowledged without acting: its outbox row stays unhandled, so the relay sends
            # it again after relay_after, and meanwhile the wake-ups of other tenants behind
            # it are not held back
            self.broker.ack([delivery])
            return
        # the lease is taken as the execution is read; if someone holds it, the holder acts
        # on the wake-up (it looks for new events in the commit that gives the lease up), and
        # it is acknowledged here
        if self._run_leased(wakeup.execution_id, wakeup.tenant, None):
            self.broker.ack([delivery])

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Record the message in the database, then move it to the transport's dead letters
        (a crash in between records it twice, never loses it)."""
        assert self.broker is not None
        wakeup = delivery.wakeup
        self.store.insert_dead_letter(
            transport=self.broker_scheme,
            transport_id=delivery.id,
            # PostgreSQL cannot store NUL in JSON: escape it, or the message could never be
            # dead-lettered and would come back for ever
            message={_no_nul(k): _no_nul(v) for k, v in delivery.body.items()},
            reason=reason,
            deliveries=delivery.deliveries,
            tenant=wakeup.tenant if wakeup else None,
            execution_id=wakeup.execution_id if wakeup else None,
            event_id=wakeup.event_id if wakeup else None,
        )
        self.broker.dead_letter(delivery, reason)
        self._count(dead_letters=1)
        log.error("worker %s: message %s dead-lettered: %s", self.id, delivery.id, reason)

    def _relay(self) -> None:
        """Publish again the wake-ups committed but not handled after ``relay_after`` seconds
        (their fast-path publish failed, or the broker lost them), and trim the broker."""
        assert self.broker is not None
        last_trim = 0.0
        while not self._stopping.wait(self.relay_interval):
            try:
                rows = self.store.relay_claim(
                    older_than=self.relay_after, again_after=self.relay_after * 5, limit=500
                )
                if rows:
                    self.broker.publish(
                        [Wakeup(execution_id=e, tenant=t, event_id=i) for e, t, i in rows]
                    )
                    self._count(relayed=len(rows))
                trim = getattr(self.broker, "trim", None)
                if callable(trim) and time.monotonic() - last_trim >= 30:
                    last_trim = time.monotonic()
                    trim()
            except Exception as exc:  # the rows are relayed again later
                log.warning("worker %s: outbox relay: %s", self.id, exc)

    def _beat(self, *, stopped: bool = False) -> None:
        with self._lock:
            in_flight = len(self._held)
            stats = attrs.asdict(self.stats)
        self.store.beat(
            {
                "id": self.id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "version": _version(),
                "broker": self.broker_scheme,
                "concurrency": self.concurrency,
                "started_at": self._started_at,
                "stopped_at": time.time() if stopped else None,
                "in_flight": in_flight,
                "executions": stats["executions"],
                "events": stats["events"],
                "errors": stats["errors"],
            }
        )

    def _heartbeat(self) -> None:
        """Beat every ``heartbeat_interval``; touch ``health_file`` after each beat that
        reached the store, so a liveness probe sees a worker that is alive and connected."""
        while not self._finished.wait(self.heartbeat_interval):
            try:
                self._beat()
            except Exception as exc:  # the next beat tries again
                log.warning("worker %s: heartbeat: %s", self.id, exc)
                continue
            if self.health_file:
                try:
                    with open(self.health_file, "a"):
                        os.utime(self.health_file)
                except OSError as exc:
                    log.warning("worker %s: health file: %s", self.id, exc)

    def _sweep(self) -> tuple[str, str, int] | None:
        """Find an undecided event whose wake-up was lost, and take its execution."""
        for execution_id, tenant in self.store.pending_executions(self.concurrency * 4):
            if self.tenant_limit is not None and self.store.tenant_at_limit(
                tenant, self.tenant_limit
            ):
                continue
            token = self.store.take_lease(execution_id, self.id, self.lease_ttl, tenant=tenant)
            if token is not None:
                return execution_id, tenant, token
        return None

    def _run_leased(self, execution_id: str, tenant: str, token: int | None) -> bool:
        """Process the execution under the lease (``token``; ``None``: one taken as the
        execution is read) until nothing is left, then give the lease up; ``True`` when
        everything was committed or someone else holds the lease, ``False`` when the execution
        is held back after a failure (its lease kept for a growing pause)."""
        settled, token = self._process_leased(execution_id, tenant, token)
        if settled is None:
            return True  # not here for this tenant, or held by another, who acts on it
        if not settled:
            return False
        # the engine gave the lease up in the commit that found nothing left, unless a stop
        # cut the processing short (giving it up again changes nothing)
        if self._stopping.is_set() and token is not None:
            try:
                self.store.release_lease(execution_id, self.id, token)
            except Exception as exc:  # the lease expires by itself
                log.warning("worker %s: could not release %s: %s", self.id, execution_id, exc)
        return True

    def _process_leased(
        self, execution_id: str, tenant: str, token: int | None
    ) -> tuple[bool | None, int | None]:
        """Process under the lease ``token``, or one taken now (``None``), and say how it
        went, with the token: ``True`` when everything was committed, ``False`` when the
        execution is held back after a failure, ``None`` when it is not there for ``tenant``
        (no lease is kept) or, with no ``token`` given, someone else holds the lease."""
        held: list[int] = []

        def hold(lease: Lease) -> None:
            with self._lock:
                self._held[execution_id] = lease.token
            held.append(lease.token)

        if token is not None:
            hold(Lease(owner=self.id, token=token, ttl=self.lease_ttl))
        cooldown: float | None = None
        gone = False
        try:
            with logs.bound(execution_id=execution_id, tenant=tenant):
                if token is not None:
                    count: int | None = self.engine.process(
                        execution_id,
                        tenant=tenant,
                        lease=Lease(owner=self.id, token=token, ttl=self.lease_ttl),
                        should_stop=self._stopping.is_set,
                        release_when_idle=True,
                    )
                else:
                    count = self.engine.take_and_process(
                        execution_id,
                        tenant=tenant,
                        owner=self.id,
                        ttl=self.lease_ttl,
                        should_stop=self._stopping.is_set,
                        taken=hold,
                    )
            if count is None:
                return None, None
            self._count(executions=1, events=count)
            with self._lock:
                self._failures.pop(execution_id, None)
                self._last_error.pop(execution_id, None)
        except LeaseLostError as exc:
            self._count(leases_lost=1)
            log.warning("worker %s: %s", self.id, exc)
        except ExecutionNotFoundError as exc:
            # a wake-up naming an execution that is not there for its tenant (a forged or
            # corrupt message): nothing to hold back; a lease taken for it goes at once, so the
            # real execution's own wake-ups are not kept waiting
            self._count(errors=1)
            log.warning(
                "worker %s: wake-up for %s (tenant %s): %s", self.id, execution_id, tenant, exc
            )
            if held:
                try:
                    self.store.release_stray_lease(execution_id, self.id, held[0])
                except Exception as release_error:  # the lease expires by itself
                    log.warning(
                        "worker %s: could not release %s: %s",
                        self.id,
                        execution_id,
                        release_error,
                    )
            gone = True
        except (StoreUnavailableError, sa.exc.SQLAlchemyError):
            cooldown = self.poll_interval
            raise
        except CircuitOpenError as exc:
            # an action's circuit is open and its policy is to wait: hold the execution back
            # until a trial call may be admitted
            with self._lock:
                self._failures[execution_id] = self._failures.get(execution_id, 0) + 1
                self._last_error[execution_id] = str(exc)
            cooldown = min(max(exc.retry_after, 0.5), 300.0)
            log.warning(
                "worker %s: execution %s held back %.1fs: %s", self.id, execution_id, cooldown, exc
            )
        except Exception as exc:
            # keep the execution to itself for a while, so one failing execution neither
            # spins this worker nor blocks the others
            with self._lock:
                failures = self._failures.get(execution_id, 0) + 1
                self._failures[execution_id] = failures
                self._last_error[execution_id] = f"{type(exc).__name__}: {exc}"
            cooldown = min(2.0**failures, 300.0)
            self._count(errors=1)
            log.error(
                "worker %s: execution %s failed (%d in a row), retried in %.0fs: %s",
                self.id,
                execution_id,
                failures,
                cooldown,
                exc,
                exc_info=not isinstance(exc, LedgerflowError),
            )
        finally:
            with self._lock:
                # only this thread's own entry: another thread of this worker may hold the
                # execution (this one found its lease held), or have taken it since this one
                # gave it up in its last commit
                if held and self._held.get(execution_id) == held[0]:
                    del self._held[execution_id]
            if cooldown is not None:
                self._park(execution_id, held[0] if held else None, cooldown)
        if gone:
            return None, None
        return cooldown is None, held[0] if held else None

    def _park(self, execution_id: str, token: int | None, cooldown: float) -> None:
        """Hold the execution back for ``cooldown`` seconds after a failure: its lease kept
        (``token``), or, when the failure came before the lease was held (the transaction
        that takes it with the execution's read failed), a lease taken for it now. Parked,
        nobody works on it meanwhile, so it does not count towards its tenant's limit."""
        try:
            if token is None:
                token = self.store.take_lease(execution_id, self.id, cooldown)
                if token is None:
                    return  # someone else holds it: theirs to act on
            self.store.renew_lease(execution_id, self.id, token, cooldown, parked=True)
        except Exception as exc:  # the lease expires by itself
            log.warning("worker %s: could not hold %s: %s", self.id, execution_id, exc)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _renew_leases(self) -> None:
        while not self._finished.wait(self.lease_ttl / 3):
            with self._lock:
                held = dict(self._held)
            for execution_id, token in held.items():
                try:
                    renewed = self.store.renew_lease(execution_id, self.id, token, self.lease_ttl)
                    with self._lock:
                        still_held = self._held.get(execution_id) == token
                    if not renewed and still_held:  # not merely given up meanwhile
                        log.warning("worker %s: lease on %s was lost", self.id, execution_id)
                except Exception as exc:  # keep renewing the others
                    log.warning("worker %s: renewing %s failed: %s", self.id, execution_id, exc)

    def _listen(self) -> None:
        """Wake idle threads on the transport's wake-ups; it polls meanwhile on trouble."""
        try:
            self.transport.listen(self._wake.set, self._stopping)
        except Exception:  # polling goes on without wake-ups
            log.exception("worker %s: the transport's listener failed; polling", self.id)


def _no_nul(text: str) -> str:
    return text.replace("\x00", "\\x00")


def _version() -> str:
    from ledgerflow import __version__

    return __version__
