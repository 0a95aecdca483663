"""Durations as written in definitions: ``90s``, ``15m``, ``48h``, ``2d``, ``1w``, compounds such
as ``1h30m``, or ISO 8601 (``PT48H``, ``P2DT12H``).

Months and years are refused: their length depends on the calendar, and a timer's delay must
not.
"""

from __future__ import annotations

import re

__all__ = ["parse"]

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_SHORT = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_ISO = re.compile(
    r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.IGNORECASE
)


def parse(text: str) -> float:
    """The number of seconds ``text`` stands for; a positive number.

    Raises :class:`ValueError` with a message that says what is accepted.
    """
    cleaned = text.strip().replace(" ", "")
    match = _SHORT.match(cleaned) or _ISO.match(cleaned)
    if not cleaned or match is None or not any(match.groups()) or cleaned.upper().endswith("T"):
        raise ValueError(
            f"bad duration {text!r}: use a number with a unit (s, m, h, d, w), e.g. '48h' or "
            "'1h30m', or ISO 8601 such as 'PT48H'"
        )
    seconds = sum(
        float(value) * size
        for value, size in zip(match.groups(), _UNITS.values(), strict=True)
        if value is not None
    )
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: it must be longer than zero")
    return seconds
