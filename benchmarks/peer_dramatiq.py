"""Dramatiq under the reference workload, written for this benchmark the way its documentation
recommends: the Redis broker (a message is acknowledged after its actor returns), and a group of
A and B with a completion callback, C, through the ``GroupCallbacks`` middleware (its barrier
on a Redis rate-limiter backend).

Runs in the peers' environment (``benchmarks/.venv-peers``). ``dramatiq peer_dramatiq
--processes 2`` with the default number of threads per process; the client calls
``group([effect.message(event, "A"), effect.message(event, "B")])``, adds
``effect_c.message(event)`` as its completion callback and runs it, once per workflow. Each
actor commits its write in a transaction of its own: at least once. The steps workflow is a
pipeline of ten messages (results ignored), the tenth writing the completion row. The URLs come
from ``BENCH_REDIS_URL`` and ``BENCH_APP_URL``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from typing import Any

import dramatiq
import sqlalchemy as sa
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend

import workload

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(GroupCallbacks(RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


@functools.cache
def _engine() -> sa.Engine:
    return sa.create_engine(os.environ["BENCH_APP_URL"], pool_size=8)


@dramatiq.actor(max_retries=3)
def effect(data: dict[str, Any], action: str) -> None:
    with _engine().begin() as conn:
        workload.write_effect(conn, data["workflow"], action)


@dramatiq.actor(max_retries=3)
def effect_c(data: dict[str, Any]) -> None:
    with _engine().begin() as conn:
        workload.write_effect(conn, data["workflow"], "C")


@dramatiq.actor
def noop() -> None:
    return None


@dramatiq.actor
def steps_done(workflow: str) -> None:
    with _engine().begin() as conn:
        workload.write_steps_done(conn, workflow)


class DramatiqSystem:
    """Dramatiq under :func:`workload.measure`."""

    name = "Dramatiq"
    has_steps = True

    def __init__(self, config: dict[str, Any]) -> None:
        self.redis_url: str = config["redis_url"]
        self.effects_url: str = config["effects_url"]
        self.processes: int = config["processes"]

    def ready(self) -> bool:
        return True

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                sys.executable,
                "-m",
                "dramatiq",
                "peer_dramatiq",
                "--processes",
                str(self.processes),
            ]
        ]

    def worker_env(self) -> dict[str, str]:
        return {"BENCH_REDIS_URL": self.redis_url, "BENCH_APP_URL": self.effects_url}

    def submit(self, workflow: str, data: Mapping[str, Any]) -> None:
        event = dict(data)
        group = dramatiq.group([effect.message(event, "A"), effect.message(event, "B")])
        group.add_completion_callback(effect_c.message(event))
        group.run()

    def submit_steps(self, workflow: str) -> None:
        dramatiq.pipeline(
            [
                *(noop.message_with_options(pipe_ignore=True) for _ in range(workload.STEPS - 1)),
                steps_done.message_with_options(args=(workflow,), pipe_ignore=True),
            ]
        ).run()

    def close(self) -> None:
        broker.close()


if __name__ == "__main__":
    sys.exit(workload.peer_main(DramatiqSystem))
