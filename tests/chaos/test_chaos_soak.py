"""Scenario 7: a soak. Steady load for a while (12 s in the short run, 10 minutes in the long
one), sampling each worker's resident memory and the database's connection count: neither
grows once warmed up, and every guarantee holds at the end."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from chaos.battery import Fleet, Load, audit, check, record, seed_canary, size
from chaos.servers import PrivatePostgres
from ledgerflow.engine import Engine


def rss_kib(pid: int) -> int:
    """A process's resident memory, in KiB (``VmRSS`` in ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def test_steady_load_without_growth(
    chaos: Engine, fleet: Fleet, private_pg: PrivatePostgres
) -> None:
    run = size()
    started = time.monotonic()
    canary = seed_canary(chaos)
    load = Load(engine=chaos)
    executions = load.create(max(10, run.executions // 4))
    for _ in range(run.workers):
        fleet.spawn()
    fleet.wait_ready(chaos, run.deadline)
    database = chaos.store.url.rsplit("/", 1)[1]
    memory: list[int] = []
    connections: list[int] = []
    n = 0
    end = time.monotonic() + run.soak_seconds
    next_sample = time.monotonic()
    while time.monotonic() < end:
        for x in executions:  # one round: a hit to every execution
            load.hit(x, n)
        n += 1
        if time.monotonic() >= next_sample:
            memory.append(sum(rss_kib(p.pid) for p in fleet.alive))
            connections.append(private_pg.connections(database))
            next_sample = time.monotonic() + run.soak_seconds / 24
        # steady, not flat out: let the workers keep up
        if n % 5 == 0:
            load.wait_processed(fleet, run.deadline)
        else:
            time.sleep(0.05)
    load.wait_processed(fleet, run.deadline)
    assert len(fleet.alive) == run.workers, fleet.log()
    # the first quarter warms up (imports, pools, caches); after it, no growth beyond noise
    quarter = max(1, len(memory) // 4)
    warm, last = memory[quarter : 2 * quarter], memory[-quarter:]
    memory_growth = statistics.median(last) / statistics.median(warm) - 1
    assert memory_growth < 0.25, (memory, "resident memory keeps growing")
    assert max(connections[quarter:]) <= max(connections[:quarter]) + 2 * run.workers, connections
    tally = audit(load, canary=canary)
    record(
        "soak: steady load",
        tally,
        faults=0,
        seconds=time.monotonic() - started,
        notes=[
            f"{run.soak_seconds:.0f} s",
            f"workers' memory {warm[0] // 1024} MiB, then {last[-1] // 1024} MiB "
            f"({memory_growth:+.0%} median)",
            f"connections {min(connections)} to {max(connections)}",
        ],
    )
    check(tally, fleet)
