"""DBOS Transact under the reference workload, written for this benchmark the way its
documentation recommends: a queue worker service and a client that enqueues.

Runs in the peers' environment (``benchmarks/.venv-peers``). Two worker processes
(``python peer_dbos.py worker MODE SYSTEM_DB APP_DB READY_DIR``) each configure DBOS on a
PostgreSQL system database as an executor of its own, launch and register the queue ``bench``
with a worker concurrency of ten workflows (its connection pools as large), as DBOS's queue
guide recommends; the client is a ``DBOSClient`` on the same system database calling
``enqueue`` once per workflow. Without the concurrency limit a worker starts every workflow it
dequeues at once, each on a thread of its own, and under a backlog of a few thousand those
queue for the datasource's connections until SQLAlchemy's 30 s pool timeout fails their
transaction step, which DBOS does not retry: the workflow ends in ``ERROR``.

The ``invoice`` workflow runs its actions A, B and C in sequence (each is a checkpointed
operation; running A and B at once would take child workflows on a queue, more database writes
than two millisecond steps cost), in one of two modes:

- ``steps``: each action is a ``@DBOS.step`` that commits its write in a transaction of its own,
  and DBOS checkpoints the step's output after it: at least once;
- ``transactions``: each action is a transaction of a ``SQLAlchemyDatasource`` on the
  application database, at READ COMMITTED (as ledgerflow's actions here): DBOS records the
  output in the same transaction, exactly once.

The ``steps`` workflow is ten ``@DBOS.step`` calls; the tenth writes the completion row.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import workload

QUEUE = "bench"
POLLING_INTERVAL = 0.05  # seconds between a worker's looks at the queue (the default is 1)
# workflows one worker runs at once (the queue's worker_concurrency); without it a worker starts
# every workflow it dequeues, each on a thread of its own, and they queue for the connections
WORKER_CONCURRENCY = 10


def serve(mode: str, system_url: str, app_url: str, ready_dir: str) -> None:
    """A DBOS worker process, until SIGTERM; it says it has launched with a file of its own in
    ``ready_dir``."""
    from dbos import DBOS, DBOSConfig, SQLAlchemyDatasource

    config = DBOSConfig(
        name="bench",
        system_database_url=system_url,
        log_level="WARNING",
        # each process an executor of its own, as DBOS asks of processes sharing a system
        # database: recovery at launch takes over only its own executor's pending workflows
        executor_id=f"bench-{os.getpid()}",
    )
    DBOS(config=config)
    engine = sa.create_engine(app_url, pool_size=WORKER_CONCURRENCY)

    if mode == "transactions":
        datasource = SQLAlchemyDatasource.create(
            app_url, engine_kwargs={"pool_size": WORKER_CONCURRENCY}
        )

        @datasource.transaction(name="effect", isolation_level="READ COMMITTED")
        def effect(workflow: str, action: str) -> int | None:
            return workload.write_effect(datasource.sql_session().connection(), workflow, action)

        @datasource.transaction(name="steps_done", isolation_level="READ COMMITTED")
        def done(workflow: str) -> None:
            workload.write_steps_done(datasource.sql_session().connection(), workflow)

    else:

        @DBOS.step(name="effect")
        def effect(workflow: str, action: str) -> int | None:
            with engine.begin() as conn:
                return workload.write_effect(conn, workflow, action)

        @DBOS.step(name="steps_done")
        def done(workflow: str) -> None:
            with engine.begin() as conn:
                workload.write_steps_done(conn, workflow)

    @DBOS.step(name="noop")
    def noop() -> None:
        return None

    @DBOS.workflow(name="invoice")
    def invoice(data: dict[str, Any]) -> None:
        for action in workload.ACTIONS:
            effect(data["workflow"], action)

    @DBOS.workflow(name="steps")
    def steps(workflow: str) -> None:
        for _ in range(workload.STEPS - 1):
            noop()
        done(workflow)

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    DBOS.launch()
    DBOS.register_queue(
        QUEUE, worker_concurrency=WORKER_CONCURRENCY, polling_interval_sec=POLLING_INTERVAL
    )
    (Path(ready_dir) / str(os.getpid())).touch()
    stopped.wait()
    DBOS.destroy()


class DBOSSystem:
    """DBOS under :func:`workload.measure`."""

    has_steps = True

    def __init__(self, config: dict[str, Any]) -> None:
        from dbos import DBOSClient

        self.mode: str = config["mode"]
        self.name = f"DBOS, {self.mode}"
        self.system_url: str = config["system_url"]
        self.effects_url: str = config["effects_url"]
        self.processes: int = config["processes"]
        self.ready_dir = Path(config["logdir"]) / f"{config['label']}-ready"
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        # the workers create the system database's schema at launch; the client waits for it
        self.client: DBOSClient | None = None

    def _client(self) -> Any:
        from dbos import DBOSClient

        if self.client is None:
            self.client = DBOSClient(system_database_url=self.system_url)
        return self.client

    def ready(self) -> bool:
        """Whether every worker has launched and registered the queue (each leaves a file)."""
        return len(list(self.ready_dir.iterdir())) >= self.processes

    def worker_commands(self) -> list[list[str]]:
        command = [
            sys.executable,
            "peer_dbos.py",
            "worker",
            self.mode,
            self.system_url,
            self.effects_url,
            str(self.ready_dir),
        ]
        return [command] * self.processes

    def worker_env(self) -> dict[str, str]:
        return {}

    def submit(self, workflow: str, data: Mapping[str, Any]) -> None:
        self._client().enqueue({"workflow_name": "invoice", "queue_name": QUEUE}, dict(data))

    def submit_steps(self, workflow: str) -> None:
        self._client().enqueue({"workflow_name": "steps", "queue_name": QUEUE}, workflow)

    def close(self) -> None:
        if self.client is not None:
            self.client.destroy()


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        serve(*sys.argv[2:6])
    else:
        sys.exit(workload.peer_main(DBOSSystem))
