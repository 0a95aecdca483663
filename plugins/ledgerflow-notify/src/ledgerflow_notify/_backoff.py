"""The retries inside one send: which failures are worth another try, and how long to wait."""

from __future__ import annotations

from collections.abc import Callable

import tenacity


class TransientFailure(Exception):
    """A failure that may pass if the same send is tried again (a refused connection, a
    timeout, an HTTP 429 or 5xx, an SMTP 4xx reply). ``status`` is the HTTP status or SMTP
    code if there was an answer; ``retry_after`` the seconds the receiver asked us to wait."""

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def backoff_wait(
    initial: float, maximum: float, retry_after_max: float
) -> Callable[[tenacity.RetryCallState], float]:
    """Exponential backoff with jitter (``initial``, doubling, at most ``maximum`` seconds);
    when the receiver said how long to wait (``Retry-After``), that long instead, but at most
    ``retry_after_max`` seconds, so one send never holds a worker thread for long."""
    # (not wait_exponential_jitter: its ``initial`` is deprecated in tenacity 9, and its
    # replacement ``multiplier`` is unknown to the tenacity 8.2 we support)
    exponential = tenacity.wait_exponential(multiplier=initial, max=maximum) + tenacity.wait_random(
        0, initial
    )

    def wait(state: tenacity.RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, TransientFailure) and failure.retry_after is not None:
            return max(0.0, min(failure.retry_after, retry_after_max))
        return float(exponential(state))

    return wait


def retrying(attempts: int, wait: Callable[[tenacity.RetryCallState], float]) -> tenacity.Retrying:
    """Up to ``attempts`` tries, again only after a :class:`TransientFailure`, which is
    re-raised when the last try fails."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait,
        retry=tenacity.retry_if_exception_type(TransientFailure),
        reraise=True,
    )
