"""Progress of long command-line operations: a bar on a terminal, plain lines elsewhere.

``ledgerflow dead-letters retry --all``, replays and migrations walk many items; an operator at a
terminal sees a live bar, while a log file or a CI job sees a line per step of progress it can
read afterwards (``retrying dead letters: 40/200``). Progress goes to standard error, so the
command's own output on standard output stays clean for pipes and ``--json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

__all__ = ["track"]

T = TypeVar("T")

# plain mode: at most one line per this many seconds, besides the first and the last
_PLAIN_EVERY = 2.0


def track(
    items: Iterable[T],
    *,
    total: int | None,
    description: str,
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, in order, showing how far the caller got.

    On a terminal (``stream``, default standard error, is a TTY) a rich progress bar is drawn
    and removed once done. Otherwise lines ``"description: n/total"`` (``"description: n"``
    when ``total`` is ``None``) are written: one when the first item is reached, at most one
    every two seconds while going on, and a last one with the final count, so a log shows
    where a long run stood. Stopping early (breaking out, or an exception) ends the display
    too; nothing is written for an empty ``items`` on a terminal, and one ``: 0`` line
    otherwise.

    Raises :class:`ValueError` for a negative ``total`` or an empty ``description``.
    """
    if total is not None and (not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be a count of at least 0 or None, not {total!r}")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("description must be a non-empty string")
    out = stream if stream is not None else sys.stderr
    if _is_terminal(out):
        return _bar(items, total=total, description=description, stream=out)
    return _lines(items, total=total, description=description, stream=out)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _bar(items: Iterable[T], *, total: int | None, description: str, stream: TextIO) -> Iterator[T]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def _lines(
    items: Iterable[T], *, total: int | None, description: str, stream: TextIO
) -> Iterator[T]:
    done = 0
    shown = -1
    last = 0.0

    def show() -> None:
        nonlocal shown, last
        suffix = f"/{total}" if total is not None else ""
        stream.write(f"{description}: {done}{suffix}\n")
        stream.flush()
        shown = done
        last = time.monotonic()

    try:
        for item in items:
            if done == 0:
                show()
            yield item
            done += 1
            if time.monotonic() - last >= _PLAIN_EVERY:
                show()
    finally:
        if shown != done or done == 0:
            show()
