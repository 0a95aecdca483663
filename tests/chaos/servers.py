"""A private PostgreSQL cluster for the battery: ``initdb`` and ``pg_ctl`` (from
``pg_config --bindir``) on a temporary directory and a free port of 127.0.0.1, that a test may
flood, stop and restart without disturbing the shared server anyone else uses.

Unlike the benchmarks' cluster it keeps its data across :meth:`PrivatePostgres.restart` (a
restart is the fault under test, not a reset), and it hands out databases owned by a role that
is neither a superuser nor exempt from row-level security, as ``tests/conftest.py`` does for the
shared server: the tenant wall applies to everything the battery runs.
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
from typing import Self

import psycopg

from ledgerflow.store import confinement_prerequisites

__all__ = ["PrivatePostgres", "PrivatePostgresError"]


class PrivatePostgresError(RuntimeError):
    """``initdb`` or ``pg_ctl`` is missing or failed; the message quotes its output."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bindir() -> Path:
    try:
        done = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PrivatePostgresError(f"pg_config --bindir failed: {exc}") from exc
    return Path(done.stdout.strip())


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, on 127.0.0.1 and a port it keeps across
    :meth:`restart`; trust authentication for the loopback only. A context manager: stopped and
    removed on exit."""

    def __init__(self, *, max_connections: int = 200) -> None:
        self.port = 0
        self.max_connections = max_connections
        self._dir: Path | None = None
        self._user: list[str] = []
        self._bindir = _bindir()

    @property
    def admin_url(self) -> str:
        """The superuser's URL of the ``postgres`` database (for setting up, never for the code
        under test)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        """Whether the server answers now."""
        try:
            with psycopg.connect(self.admin_url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _run(self, *command: str, timeout: float = 120) -> None:
        try:
            done = subprocess.run(
                [*self._user, *command], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise PrivatePostgresError(f"{command[0]} timed out after {timeout}s") from exc
        if done.returncode:
            raise PrivatePostgresError(
                f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )

    def start(self) -> None:
        """Create the cluster at the first call, then start the server and wait for it."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ledgerflow-chaos-pg-"))
            if os.geteuid() == 0:  # PostgreSQL refuses to run as root
                entry = pwd.getpwnam("postgres")
                os.chown(self._dir, entry.pw_uid, entry.pw_gid)
                self._user = ["runuser", "-u", "postgres", "--"]
            self._run(
                str(self._bindir / "initdb"),
                "-D",
                str(self._dir / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            self.port = _free_port()
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self._dir}",
                f"-c max_connections={self.max_connections}",
                # the battery tests crashes of ledgerflow, not of the disk: spare the shared
                # machine's disk the flushes (a restart is a clean shutdown and keeps everything)
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self._dir / "data"),
            "-l",
            str(self._dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop the server, leave it down ``down_for`` seconds, and start it again."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut), keeping its data."""
        if self._dir is None:
            return
        self._run(
            str(self._bindir / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "fast", "-w", "stop"
        )

    def create_database(self) -> tuple[str, str]:
        """A new database owned by a new role that row-level security applies to, and a
        second role for database actions (to be confined); returns the URLs of the database
        as each role."""
        name = f"chaos_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOBYPASSRLS')
            admin.execute(f'CREATE ROLE "{name}_actions" LOGIN NOSUPERUSER NOBYPASSRLS')
            admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        base = self.admin_url.rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/{name}", autocommit=True, connect_timeout=10) as admin:
            for statement in confinement_prerequisites():
                admin.execute(statement)
        server = f"127.0.0.1:{self.port}/{name}"
        return f"postgresql://{name}@{server}", f"postgresql://{name}_actions@{server}"

    def connections(self, database: str) -> int:
        """How many backends are connected to ``database`` now."""
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        """Stop the server and remove the cluster."""
        if self._dir is None:
            return
        with contextlib.suppress(PrivatePostgresError):
            self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
