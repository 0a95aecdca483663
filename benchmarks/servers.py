"""Private servers for the comparison benchmark: a PostgreSQL cluster of its own and databases on
it, so that flooding them disturbs nobody else's work on the shared servers.

:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` (from ``pg_config --bindir``) on a
temporary directory and a free port on 127.0.0.1, with the server's default durability
(``fsync`` and ``synchronous_commit`` on), ``pg_stat_statements`` preloaded, and trust
authentication; it is stopped and removed on exit. As root, the server runs as the ``postgres``
user (PostgreSQL refuses to run as root). Redis comes from ``ledgerflow_redis.testing``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pg_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: ``pg_config --bindir``."""
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


class PostgresServer:
    """A PostgreSQL cluster of the benchmark's own; a context manager."""

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        self.port = 0
        self.settings = {
            "max_connections": "300",
            "shared_buffers": "256MB",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            **(settings or {}),
        }
        self._dir: Path | None = None
        self._user: list[str] = []

    @property
    def admin_url(self) -> str:
        """A URL of the server's ``postgres`` database, for psycopg."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._user, *command], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        bindir = pg_bindir()
        self._dir = Path(tempfile.mkdtemp(prefix="ledgerflow-bench-pg-"))
        data = self._dir / "data"
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
            self._user = ["runuser", "-u", "postgres", "--"]
        self._run(
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.port = free_port()
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self._dir}",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
        )
        self._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self._dir / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        if self._dir is None:
            return
        with contextlib.suppress(RuntimeError):
            self._run(
                str(pg_bindir() / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "fast", "stop"
            )
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Databases:
    """Creates databases on the server at ``admin_url`` and drops them when ``stack`` closes."""

    def __init__(self, admin_url: str, stack: contextlib.ExitStack) -> None:
        self.admin_url = admin_url
        self.stack = stack
        self.run_id = uuid.uuid4().hex[:6]

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10)

    def create(self, label: str) -> str:
        """A new empty database; returns its name (dropped when the stack closes)."""
        name = f"bench_{self.run_id}_{label}".lower()
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.stack.callback(self.drop, name)
        return name

    def drop(self, name: str) -> None:
        with contextlib.suppress(psycopg.Error), self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url(self, name: str, driver: str = "postgresql") -> str:
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{name}".replace("postgresql://", f"{driver}://", 1)

    def server_info(self) -> dict[str, str]:
        """The server's version and durability settings."""
        with self.admin() as conn:
            return {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
            }


def wait_for(check: Any, timeout: float = 30.0) -> None:
    """Call ``check`` until it returns true, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("not ready")
        time.sleep(0.05)
