"""What every benchmark here prints: progress lines, percentiles, numbers to about three
significant digits, ``median (min-max)`` cells, plain-text and Markdown tables, and the machine.

Figures are one run's measurements; a table compares within the run. Nothing here times or
asserts anything.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def progress(message: str) -> None:
    """A time-stamped line on standard error."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# options whose values name this machine (a file, a private server's URL): a report shows
# what they stand for instead
_MACHINE_VALUES = {"--json": "FILE", "--pg": "URL", "--output": "FILE"}


def command_line(argv: Sequence[str]) -> str:
    """The command that ran, as someone else would type it: ``python benchmarks/<script>``
    and its options, with the files and server URLs of this machine named by what they are
    (``--json FILE``, ``--pg URL``)."""
    words = ["python", f"benchmarks/{Path(argv[0]).name}"]
    hidden = None
    for word in argv[1:]:
        if hidden is not None:
            words.append(hidden)
            hidden = None
            continue
        option, equals, _ = word.partition("=")
        if option in _MACHINE_VALUES:
            if equals:
                word = f"{option}={_MACHINE_VALUES[option]}"
            else:
                hidden = _MACHINE_VALUES[option]
        words.append(word)
    return shlex.join(words)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, interpolating between ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max of ``seconds``, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
    }


def num(value: float | None) -> str:
    """A measurement with about three significant digits; ``-`` for none."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as ``1.23x``; ``-`` when either is missing or zero."""
    if numerator is None or not denominator:
        return "-"
    return f"{num(numerator / denominator)}x"


def spread(values: Sequence[float | None], suffix: str = "") -> str:
    """``median (min-max)`` of the values that are not ``None``; ``-`` for none."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    median = statistics.median(present)
    if len(present) == 1:
        return f"{num(median)}{suffix}"
    return f"{num(median)}{suffix} ({num(min(present))}-{num(max(present))}{suffix})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned; an empty
    row is a rule."""
    widths = [max(len(row[i]) for row in [header, *rows] if row) for i in range(len(header))]
    rule = "  " + "-" * (sum(widths) + 3 * (len(widths) - 1))

    def line(row: Sequence[str]) -> str:
        if not row:
            return rule
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  " + "   ".join(cells).rstrip()

    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned; empty rows
    are left out. A ``|`` in a cell is escaped."""

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

    align = "| --- | " + " | ".join("---:" for _ in header[1:]) + " |"
    return "\n".join([line(header), align, *(line(row) for row in rows if row)])


def cpu_model() -> str:
    """The processor's model name, from ``/proc/cpuinfo``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine_info() -> dict[str, Any]:
    """The machine and the Python running the benchmark."""
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "memory": memory,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_average": os.getloadavg()[0],
    }
