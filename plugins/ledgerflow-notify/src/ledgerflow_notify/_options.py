"""Reading the options every notifier shares (``attempts``, ``timeout``) and refusing unknown
ones, collecting every problem before raising, so one error names them all."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from ledgerflow.model import JSON

MAX_ATTEMPTS = 10
"""The most tries one send may make: beyond that, a step's own ``retry`` strategy is the
better tool (it records each attempt and does not hold a worker thread)."""

MAX_TIMEOUT = 300.0
"""The longest per-attempt timeout, in seconds."""


def unknown_keys(options: Mapping[str, JSON], known: Collection[str]) -> list[str]:
    """A problem for each option not in ``known``: a typo must not be silently ignored."""
    return [
        f"options.{key}: unknown option (known: {', '.join(sorted(known))})"
        for key in sorted(options)
        if key not in known
    ]


def attempts_option(options: Mapping[str, JSON], problems: list[str], default: int = 3) -> int:
    """``options.attempts``: an integer from 1 to :data:`MAX_ATTEMPTS`."""
    value = options.get("attempts", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPTS:
        problems.append(
            f"options.attempts: must be an integer from 1 to {MAX_ATTEMPTS}, not {value!r}"
        )
        return default
    return value


def timeout_option(
    options: Mapping[str, JSON], problems: list[str], default: float = 10.0
) -> float:
    """``options.timeout``: seconds, more than 0 and at most :data:`MAX_TIMEOUT`."""
    value = options.get("timeout", default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIMEOUT
    ):
        problems.append(
            f"options.timeout: must be a number of seconds, more than 0 and at most "
            f"{MAX_TIMEOUT:g}, not {value!r}"
        )
        return default
    return float(value)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters: for a response body in an error."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def plural(count: int, noun: str) -> str:
    """``1 attempt``, ``3 attempts``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
