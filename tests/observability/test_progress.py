"""ledgerflow.progress.track: plain lines off a terminal, a rich bar on one, items unchanged."""

from __future__ import annotations

import io

import pytest

from ledgerflow.progress import track


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as a real TTY does."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    seen = list(track(range(5), total=5, description="retrying", stream=out))
    assert seen == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    assert lines[0] == "retrying: 0/5"
    assert lines[-1] == "retrying: 5/5"


def test_plain_lines_without_total() -> None:
    out = io.StringIO()
    assert list(track(iter("abc"), total=None, description="replaying", stream=out)) == [
        "a",
        "b",
        "c",
    ]
    assert out.getvalue().splitlines()[-1] == "replaying: 3"


def test_empty_items_still_say_zero() -> None:
    out = io.StringIO()
    assert list(track([], total=0, description="nothing", stream=out)) == []
    assert out.getvalue() == "nothing: 0/0\n"


def test_stopping_early_reports_where_it_stood() -> None:
    out = io.StringIO()
    for item in track(range(100), total=100, description="bulk", stream=out):
        if item == 6:
            break
    assert out.getvalue().splitlines()[-1] == "bulk: 6/100"


def test_a_terminal_gets_a_bar_and_the_same_items() -> None:
    out = _Terminal()
    assert list(track(range(3), total=3, description="migrating", stream=out)) == [0, 1, 2]
    drawn = out.getvalue()
    assert "migrating" in drawn
    assert "migrating: " not in drawn  # no plain lines on a terminal


def test_standard_error_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(track([1, 2], total=2, description="steps")) == [1, 2]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == "steps: 2/2"


@pytest.mark.parametrize(("total", "description"), [(-1, "x"), (3, ""), (3, "   "), (2.5, "x")])
def test_bad_arguments_are_refused(total: object, description: str) -> None:
    with pytest.raises(ValueError, match=r"total|description"):
        track([1], total=total, description=description)  # type: ignore[arg-type]
