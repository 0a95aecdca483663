"""A private Redis for tests: ``redis-server`` on 127.0.0.1 and a free port, keeping nothing on
disk, that a test can stop, start and restart (losing everything, as a Redis without
persistence does).

It is what this distribution's own tests run against, and it serves an application's tests of
its workers just as well, without touching a shared Redis::

    with RedisServer() as server:
        transport = RedisTransport(server.url(streams=2, claim_idle=0.2), engine)
        ...
        server.restart()  # every stream and group is gone

It needs the ``redis-server`` program (Debian's ``redis-server`` package, say);
:func:`redis_server_available` tells whether it is there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlencode

import redis

__all__ = ["Entry", "Pending", "RedisServer", "RedisServerError", "redis_server_available"]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A stream entry, as text: its ``id`` (``1700000000000-0``) and ``fields``."""

    id: str
    fields: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class Pending:
    """A pending entry of a group: the ``consumer`` it was last delivered to, and how many
    times it was delivered (``deliveries``)."""

    consumer: str
    deliveries: int


class RedisServerError(RuntimeError):
    """``redis-server`` is missing, or did not start; the message quotes its log."""


def redis_server_available(executable: str = "redis-server") -> bool:
    """Whether the ``redis-server`` program can be run."""
    return shutil.which(executable) is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process of the test's own: ``--save "" --appendonly no``, on
    127.0.0.1 and a free port that it keeps across :meth:`restart`. A context manager; or call
    :meth:`start` and :meth:`stop`."""

    def __init__(self, *, executable: str = "redis-server", startup_timeout: float = 10.0) -> None:
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.port = 0
        """The port, chosen at the first start."""
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        return self._process is not None and self._process.poll() is None

    def url(self, **parameters: object) -> str:
        """A broker URL for this server's database 0, with ``parameters`` as its query
        string: ``server.url(streams=2, claim_idle=0.2)``."""
        query = urlencode({name: str(value) for name, value in parameters.items()})
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def client(self) -> redis.Redis:
        """A plain redis-py client of this server (bytes in, bytes out); close it after use."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0)

    def flush(self) -> None:
        """Empty the server: every stream and group is gone."""
        with self.client() as client:
            client.flushall()

    def entries(self, stream: str, start: str = "-", end: str = "+") -> list[Entry]:
        """The entries of ``stream`` from ``start`` to ``end`` (entry ids, inclusive), oldest
        first, as text: what a test checks in the wake-up streams and the dead letters."""
        with self.client() as client:
            rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream, start, end)
        return [
            Entry(
                id=entry_id.decode(),
                fields={
                    k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()
                },
            )
            for entry_id, raw in rows
        ]

    def pending(self, stream: str, group: str = "ledgerflow") -> dict[str, Pending]:
        """The entries of ``stream`` that ``group`` delivered and has not acknowledged, by
        entry id: to whom, and how many times (``XPENDING``)."""
        with self.client() as client:
            rows: list[dict[str, Any]] = client.xpending_range(stream, group, "-", "+", 10_000)
        return {
            row["message_id"].decode(): Pending(
                consumer=row["consumer"].decode(), deliveries=int(row["times_delivered"])
            )
            for row in rows
        }

    def length(self, stream: str) -> int:
        """How many entries ``stream`` holds (0 if it does not exist)."""
        with self.client() as client:
            return int(client.xlen(stream))

    def start(self) -> None:
        """Start the server (on the same port as before, if it ran before) and wait until it
        answers ``PING``."""
        if self.running:
            return
        path = shutil.which(self.executable)
        if path is None:
            raise RedisServerError(f"{self.executable} is not installed (or not on PATH)")
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="ledgerflow-redis-")
        directory = Path(self._directory.name)
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):
            port = self.port if fixed else _free_port()
            if self._launch(path, port, directory):
                self.port = port
                return
        log = (directory / "redis.log").read_text(errors="replace")[-2000:]
        raise RedisServerError(f"redis-server did not start; its log ends with:\n{log}")

    def _launch(self, path: str, port: int, directory: Path) -> bool:
        if self._log is not None:
            self._log.close()
        self._log = (directory / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                path,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    self._process = None
                    return False  # most likely the port was taken meanwhile
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
        self._terminate()
        return False

    def stop(self) -> None:
        """Stop the server; what it held is lost."""
        self._terminate()

    def restart(self) -> None:
        """Stop the server and start it again on the same port, empty (no persistence)."""
        self.stop()
        self.start()

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self._terminate()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
