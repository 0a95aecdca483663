"""The raw floor: the reference workload with no framework, what this machine can do for it.

The client adds (``XADD``) each workflow's event (its JSON payload) to one Redis stream. Two
consumer processes (``python raw_floor.py consume REDIS_URL PG_URL``) each run two consumer
threads, the concurrency ledgerflow's two worker processes of two threads have, so that the
ratio of the two measures what the framework costs, not a difference in how many commits wait
on the disk at once. Each thread loops: ``XREADGROUP`` up to 16 entries, for each entry the
three writes of :mod:`workload` (A, B, then C), each its own autocommitted statement on the
thread's psycopg connection, then one ``XACK`` for the batch. No ledger, no retries, no
recovery of a consumer's pending entries: nothing but the work. It has no steps workload.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

import psycopg
import redis

import workload

STREAM = "raw:invoices"
GROUP = "raw"
BATCH = 16
THREADS = 2


def _psycopg(sql: str) -> str:
    """``:name`` parameters (SQLAlchemy's) as ``%(name)s`` (psycopg's)."""
    return re.sub(r":(\w+)", r"%(\1)s", sql)


EFFECT = _psycopg(workload.EFFECT_SQL)
COUNT_AB = _psycopg(workload.COUNT_AB_SQL)


class RawFloor:
    """The raw floor under :func:`workload.measure`."""

    name = "raw floor"
    has_steps = False

    def __init__(self, redis_url: str, pg_url: str, processes: int = 2) -> None:
        self.redis_url = redis_url
        self.effects_url = pg_url
        self.processes = processes
        self.client = redis.Redis.from_url(redis_url)
        try:
            self.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def ready(self) -> bool:
        return True

    def worker_commands(self) -> list[list[str]]:
        command = [sys.executable, "raw_floor.py", "consume", self.redis_url, self.effects_url]
        return [command] * self.processes

    def worker_env(self) -> dict[str, str]:
        return {}

    def submit(self, workflow: str, data: Mapping[str, Any]) -> None:
        self.client.xadd(STREAM, {"payload": json.dumps(data)})

    def submit_steps(self, workflow: str) -> None:
        raise NotImplementedError("the raw floor has no steps workload")

    def close(self) -> None:
        self.client.close()


def consume(redis_url: str, pg_url: str) -> None:
    """A consumer process: :data:`THREADS` consumer loops until SIGTERM."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    threads = [
        threading.Thread(target=consume_loop, args=(redis_url, pg_url, stopping))
        for _ in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def consume_loop(redis_url: str, pg_url: str, stopping: threading.Event) -> None:
    """One consumer: read, write, acknowledge, until ``stopping`` is set."""
    client = redis.Redis.from_url(redis_url)
    consumer = f"c{os.getpid()}-{threading.get_ident()}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while not stopping.is_set():
            # [[stream, [(entry id, {field: value}), …]]]: redis-py types it loosely
            reply: Any = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=BATCH, block=200)
            if not reply:
                continue
            ids: list[bytes] = []
            for entry_id, fields in reply[0][1]:
                workflow = json.loads(fields[b"payload"])["workflow"]
                for action in workload.ACTIONS:
                    seen = None
                    if action == "C":
                        row = conn.execute(COUNT_AB, {"workflow": workflow}).fetchone()
                        seen = row[0] if row else 0
                    conn.execute(EFFECT, workload.effect_params(workflow, action, seen))
                ids.append(entry_id)
            client.xack(STREAM, GROUP, *ids)


if __name__ == "__main__":
    if sys.argv[1:2] != ["consume"] or len(sys.argv) != 4:
        sys.exit("usage: raw_floor.py consume REDIS_URL PG_URL")
    consume(sys.argv[2], sys.argv[3])
