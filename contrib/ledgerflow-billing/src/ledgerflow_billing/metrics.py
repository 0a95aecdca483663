"""In-process counters the plugin's hooks keep: completed executions, and how long the billing
actions take.

They are per process, like any metrics library's counters (every engine in the process adds to
the same :data:`metrics`), and start from zero when the process does. Export them to your
monitoring system from :meth:`BillingMetrics.snapshot`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

import attrs

__all__ = ["ActionTimings", "BillingMetrics", "metrics"]


@attrs.frozen(kw_only=True)
class ActionTimings:
    """The attempts of one action: how many, how many raised, and their seconds in total and
    at most."""

    calls: int = 0
    failures: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0

    def add(self, seconds: float, *, failed: bool) -> ActionTimings:
        """These timings with one more attempt."""
        return ActionTimings(
            calls=self.calls + 1,
            failures=self.failures + failed,
            total_seconds=self.total_seconds + seconds,
            max_seconds=max(self.max_seconds, seconds),
        )


@attrs.frozen(kw_only=True)
class Snapshot:
    """The counters at one moment: completed executions by ``(tenant, final state)``, and the
    timings of each billing action by name."""

    completed: Mapping[tuple[str, str], int]
    actions: Mapping[str, ActionTimings]


class BillingMetrics:
    """Thread-safe counters: a worker runs steps on several threads at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._completed: Counter[tuple[str, str]] = Counter()
        self._actions: dict[str, ActionTimings] = {}

    def execution_completed(self, tenant: str, state: str) -> None:
        """Count one execution of ``tenant`` that reached the terminal state ``state``."""
        with self._lock:
            self._completed[tenant, state] += 1

    def action_ran(self, action: str, seconds: float, *, failed: bool) -> None:
        """Record one attempt of ``action`` that took ``seconds`` (and raised, if ``failed``)."""
        with self._lock:
            self._actions[action] = self._actions.get(action, ActionTimings()).add(
                seconds, failed=failed
            )

    def snapshot(self) -> Snapshot:
        """A copy of the counters, safe to read while workers run."""
        with self._lock:
            return Snapshot(completed=dict(self._completed), actions=dict(self._actions))


metrics = BillingMetrics()
"""The process's counters, which the plugin's hooks update."""
