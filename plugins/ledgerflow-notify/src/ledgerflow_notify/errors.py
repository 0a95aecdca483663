"""What the notifiers raise: a notification that could not be attempted, or was not delivered."""

from __future__ import annotations

from collections.abc import Sequence

from ledgerflow.errors import InvalidParametersError, LedgerflowError

__all__ = ["DeliveryError", "NotifierConfigurationError"]


class NotifierConfigurationError(InvalidParametersError):
    """A notification cannot even be attempted: an option of the step is missing or malformed,
    or a setting the notifier reads from the worker's environment is missing or malformed.

    ``notifier`` is the notifier's name, ``problems`` names each bad option (``options.url``)
    or environment variable (``LEDGERFLOW_SMTP_FROM``) and what to do about it. It is an
    :class:`~ledgerflow.errors.InvalidParametersError` (of action ``ledgerflow.notify``), so
    the engine fails the step at once: trying again cannot mend it.
    """

    def __init__(self, notifier: str, problems: Sequence[str]) -> None:
        super().__init__("ledgerflow.notify", problems)
        self.notifier = notifier

    def __str__(self) -> str:
        return f"{self.notifier} notifier: " + "; ".join(self.problems)

    def __reduce__(self) -> tuple[object, ...]:
        # the arguments differ from InvalidParametersError's: rebuild from ours when pickled
        return NotifierConfigurationError, (self.notifier, self.problems)


class DeliveryError(LedgerflowError):
    """A notification was attempted and not delivered: refused by the receiver, or still
    failing after every attempt.

    ``notifier`` is the notifier's name, ``target`` where it was sent (a URL, or the
    recipients), ``attempts`` how many tries were made, ``status`` the last HTTP status or
    SMTP reply code (``None`` when there was no answer: a refused connection, a timeout), and
    ``transient`` whether the last failure was one that may pass (a 503, a 451, a timeout)
    rather than a refusal (a 400, a 550). The step's own ``on_error`` strategy decides what
    happens next.
    """

    def __init__(
        self,
        message: str,
        *,
        notifier: str,
        target: str,
        attempts: int,
        status: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.notifier = notifier
        self.target = target
        self.attempts = attempts
        self.status = status
        self.transient = transient

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only arguments: rebuild from them, so the error survives pickling
        return _rebuild_delivery_error, (
            str(self),
            self.notifier,
            self.target,
            self.attempts,
            self.status,
            self.transient,
        )


def _rebuild_delivery_error(
    message: str, notifier: str, target: str, attempts: int, status: int | None, transient: bool
) -> DeliveryError:
    return DeliveryError(
        message,
        notifier=notifier,
        target=target,
        attempts=attempts,
        status=status,
        transient=transient,
    )
