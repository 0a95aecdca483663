"""Celery under the reference workload, written for this benchmark the way its documentation
recommends for work that must not be lost: Redis as broker and result backend, tasks
acknowledged late (``task_acks_late``, after they return) with a prefetch multiplier of 1, and a
chord to run C once A and B are done.

Runs in the peers' environment (``benchmarks/.venv-peers``). One ``celery worker`` node with
the prefork pool at its default concurrency (a process per core: 2 here); the client calls
``chord([effect.s(event, "A"), effect.s(event, "B")])(effect_c.s(event))`` once per workflow,
each task carrying the event's payload. Each task
commits its write in a transaction of its own: at least once. The steps workflow is a chain of
ten tasks (immutable signatures), the tenth writing the completion row. The broker and database
URLs come from ``BENCH_REDIS_URL`` and ``BENCH_APP_URL``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from celery import Celery, chain, chord

import workload

app = Celery(
    "peer_celery",
    broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@functools.cache
def _engine() -> sa.Engine:
    # one pool per worker process, made after the prefork pool forked it
    return sa.create_engine(os.environ["BENCH_APP_URL"], pool_size=2)


@app.task(name="bench.effect")
def effect(data: dict[str, Any], action: str) -> int | None:
    with _engine().begin() as conn:
        return workload.write_effect(conn, data["workflow"], action)


@app.task(name="bench.effect_c")
def effect_c(results: list[Any], data: dict[str, Any]) -> int | None:
    with _engine().begin() as conn:
        return workload.write_effect(conn, data["workflow"], "C")


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.steps_done")
def steps_done(workflow: str) -> None:
    with _engine().begin() as conn:
        workload.write_steps_done(conn, workflow)


class CelerySystem:
    """Celery under :func:`workload.measure`."""

    name = "Celery"
    has_steps = True

    def __init__(self, config: dict[str, Any]) -> None:
        self.redis_url: str = config["redis_url"]
        self.effects_url: str = config["effects_url"]
        app.conf.broker_url = app.conf.result_backend = self.redis_url

    def ready(self) -> bool:
        return True

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "peer_celery",
                "worker",
                "--pool",
                "prefork",
                "--loglevel",
                "WARNING",
            ]
        ]

    def worker_env(self) -> dict[str, str]:
        return {"BENCH_REDIS_URL": self.redis_url, "BENCH_APP_URL": self.effects_url}

    def submit(self, workflow: str, data: Mapping[str, Any]) -> None:
        event = dict(data)
        chord([effect.s(event, "A"), effect.s(event, "B")])(effect_c.s(event))

    def submit_steps(self, workflow: str) -> None:
        chain(
            *(noop.si() for _ in range(workload.STEPS - 1)), steps_done.si(workflow)
        ).apply_async()

    def close(self) -> None:
        app.close()


if __name__ == "__main__":
    sys.exit(workload.peer_main(CelerySystem))
