from __future__ import annotations

import pytest

from ledgerflow import durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("48h", 172800),
        ("2d", 172800),
        ("1w", 604800),
        ("1h30m", 5400),
        ("0.5s", 0.5),
        ("PT48H", 172800),
        ("P2DT12H", 216000),
        ("pt1m30s", 90),
        ("P1W", 604800),
    ],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert durations.parse(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "48", "h", "2 months", "1y", "P1M", "PT", "P", "-5m", "0s", "5x"]
)
def test_bad_durations_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration") as info:
        durations.parse(text)
    assert repr(text) in str(info.value)
