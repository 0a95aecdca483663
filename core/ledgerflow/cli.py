"""The ``ledgerflow`` command.

Every command that prints data takes ``--json`` and then prints exactly one JSON document.
Errors are one readable line on stderr and a non-zero exit; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ledgerflow import definitions, diagrams, logs
from ledgerflow.errors import DefinitionError, InvalidInputError, LedgerflowError, NotFoundError
from ledgerflow.monitoring import metrics_options, serving_metrics, status_command

if TYPE_CHECKING:
    from ledgerflow.engine import Engine, HistoryEntry

__all__ = ["main"]

audit = logging.getLogger("ledgerflow.audit")
"""Operators' actions that change what ledgerflow will do (retrying, discarding dead letters)."""

DEFAULT_DB = "sqlite:///ledgerflow.db"

EXIT_INVALID = 1
"""Exit code of ``workflow validate`` when a definition is invalid."""
EXIT_ERROR = 2
"""Exit code when a command could not do what was asked (bad input, unreadable file, …)."""


class _Group(click.Group):
    """Turns every ledgerflow error into one line on stderr, unless ``--debug`` is on."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LedgerflowError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            first, *rest = str(exc).splitlines() or [type(exc).__name__]
            more = f" (and {len(rest)} more)" if rest else ""
            click.echo(f"error: {first}{more}", err=True)
            ctx.exit(EXIT_ERROR)


class _Settings:
    """The global options, and the engine built from them on first use."""

    def __init__(
        self,
        db: str,
        app: str | None,
        broker: str = "database",
        action_db: str | None = None,
    ) -> None:
        self.db = db
        self.app = app
        self.broker = broker
        self.action_db = action_db
        self._engine: Engine | None = None

    def engine(self, *, check_schema: bool = True, load_app: bool = True) -> Engine:
        if self._engine is None:
            from ledgerflow.engine import Engine

            self._engine = Engine(self.db, broker=self.broker, action_db=self.action_db)
            if check_schema:
                self._engine.store.check_schema()
            if self.app and load_app:
                _load_app(self.app, self._engine)
        return self._engine

    def close(self) -> None:
        """Close the engine, if one was built (the command is over)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def load_app(self) -> None:
        """Load ``--app`` into the engine already built without it."""
        if self.app and self._engine is not None:
            _load_app(self.app, self._engine)


def _load_app(name: str, engine: Engine) -> None:
    """Import the user's module; its ``setup(engine)``, if any, registers actions and
    definitions."""
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise InvalidInputError(f"--app {name}: cannot import it: {exc}") from exc
    engine.add_plugin(module, name, source="app")
    setup = getattr(module, "setup", None)
    if callable(setup):
        setup(engine)


def _json_option(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidInputError(f"{option} must be a JSON object, not {type(parsed).__name__}")
    return parsed


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


pass_settings = click.make_pass_decorator(_Settings)
json_flag = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
tenant_option = click.option("--tenant", required=True, help="The tenant the execution belongs to.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="LEDGERFLOW_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Database URL (sqlite:///FILE or postgresql://…); env LEDGERFLOW_DB.",
)
@click.option(
    "--app",
    envvar="LEDGERFLOW_APP",
    default=None,
    help="Module to import first: its setup(engine) registers actions and definitions.",
)
@click.option(
    "--broker",
    envvar="LEDGERFLOW_BROKER",
    default="database",
    show_default=True,
    help="Where wake-ups travel: database (the store's outbox) or a broker URL "
    "(redis://…, with ledgerflow-redis); env LEDGERFLOW_BROKER.",
)
@click.option(
    "--action-db",
    envvar="LEDGERFLOW_ACTION_DB",
    default=None,
    help="The same PostgreSQL database reached as a confined role (see `db confine`): "
    "database actions run as it, so their SQL cannot lift the tenant wall; env "
    "LEDGERFLOW_ACTION_DB.",
)
@click.option("--debug", is_flag=True, help="Show the traceback of any error.")
@click.option(
    "--log-format",
    envvar="LEDGERFLOW_LOG_FORMAT",
    type=click.Choice(logs.LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log lines as text, or as JSON objects carrying execution, event, tenant and step "
    "ids; env LEDGERFLOW_LOG_FORMAT.",
)
@click.version_option(package_name="ledgerflow")
@click.pass_context
def cli(
    ctx: click.Context,
    db: str,
    app: str | None,
    broker: str,
    action_db: str | None,
    debug: bool,
    log_format: str,
) -> None:
    """ledgerflow: durable, event-sourced workflows."""
    ctx.obj = _Settings(db, app, broker, action_db)
    ctx.call_on_close(ctx.obj.close)
    logs.configure(log_format, level=logging.DEBUG if debug else logging.WARNING)


@cli.group(cls=_Group)
def workflow() -> None:
    """Check, draw and register workflow definitions."""


@workflow.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def validate_command(files: Sequence[Path], as_json: bool) -> None:
    """Check definition FILES; print every problem, one per line, and exit 1 if any."""
    report: list[dict[str, Any]] = []
    for path in files:
        try:
            definition = definitions.load(path)
        except DefinitionError as exc:
            report.append(
                {"file": str(path), "valid": False, "problems": [str(p) for p in exc.problems]}
            )
        else:
            report.append(
                {
                    "file": str(path),
                    "valid": True,
                    "workflow": definition.name,
                    "version": definition.version,
                    "problems": [],
                }
            )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for entry in report:
            if entry["valid"]:
                click.echo(f"{entry['file']}: ok ({entry['workflow']} v{entry['version']})")
            for problem in entry["problems"]:
                click.echo(problem)
    if not all(entry["valid"] for entry in report):
        sys.exit(EXIT_INVALID)


@workflow.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "json", "yaml"]),
    default="mermaid",
    show_default=True,
    help="Mermaid state diagram, or the canonical definition as JSON or YAML.",
)
def show_command(file: Path, fmt: str) -> None:
    """Print the definition in FILE as a diagram or in canonical form."""
    definition = definitions.load(file)
    if fmt == "mermaid":
        click.echo(diagrams.mermaid(definition), nl=False)
    else:
        click.echo(definitions.dumps(definition, "json" if fmt == "json" else "yaml"), nl=False)


@workflow.command("register")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_flag
@pass_settings
def register_command(settings: _Settings, files: Sequence[Path], as_json: bool) -> None:
    """Store the definitions in FILES; each version, once stored, never changes."""
    engine = settings.engine()
    registered = []
    for path in files:
        definition = engine.register(path)
        registered.append(
            {"file": str(path), "workflow": definition.name, "version": definition.version}
        )
    if as_json:
        _echo_json(registered)
    else:
        for entry in registered:
            click.echo(f"registered {entry['workflow']} v{entry['version']} from {entry['file']}")


@workflow.command("list")
@json_flag
@pass_settings
def list_command(settings: _Settings, as_json: bool) -> None:
    """List every registered workflow version."""
    found = settings.engine().list_definitions()
    if as_json:
        _echo_json(found)
        return
    for entry in found:
        click.echo(f"{entry['name']} v{entry['version']}  {entry['hash'][:12]}")


@workflow.command("diff")
@click.argument("workflow_name", metavar="NAME")
@click.argument("old_version", metavar="V1", type=click.IntRange(min=1))
@click.argument("new_version", metavar="V2", type=click.IntRange(min=1))
@json_flag
@pass_settings
def diff_command(
    settings: _Settings, workflow_name: str, old_version: int, new_version: int, as_json: bool
) -> None:
    """Show what changed in workflow NAME from registered version V1 to V2: states, events
    and their payload schemas, transitions and their steps."""
    from ledgerflow.versioning import diff_workflows

    engine = settings.engine()
    changes = diff_workflows(
        engine.definition(workflow_name, old_version), engine.definition(workflow_name, new_version)
    )
    if as_json:
        _echo_json(changes.to_json())
        return
    for line in changes.lines():
        click.echo(line)


@workflow.command("migrate")
@click.argument("workflow_name", metavar="NAME")
@click.option(
    "--from", "from_version", required=True, type=click.IntRange(min=1), help="The version now."
)
@click.option(
    "--to", "to_version", required=True, type=click.IntRange(min=1), help="The newer version."
)
@click.option(
    "--execution",
    "execution_ids",
    multiple=True,
    metavar="ID",
    help="An execution to migrate (repeat for more; needs --tenant).",
)
@click.option("--tenant", default=None, help="The executions' tenant (with --all: only its own).")
@click.option("--all", "every", is_flag=True, help="Every active or failed execution on --from.")
@click.option("--by", "requested_by", default=None, help="Who asks, kept in each ledger.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write nothing: say what would happen, and replay each ledger under --to.",
)
@json_flag
@pass_settings
def migrate_command(
    settings: _Settings,
    workflow_name: str,
    from_version: int,
    to_version: int,
    execution_ids: Sequence[str],
    tenant: str | None,
    every: bool,
    requested_by: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Move executions of workflow NAME from version --from to the newer --to, each in its
    current state, recording the move in its ledger; exit 1 if any was refused (each refusal
    says why)."""
    from ledgerflow.progress import track

    if bool(execution_ids) == every:
        raise InvalidInputError("choose the executions: --execution ID (repeatable) or --all")
    if execution_ids and tenant is None:
        raise InvalidInputError("--execution needs --tenant: executions are found per tenant")
    doing = "replaying" if dry_run else "migrating"

    def progress(targets: Sequence[tuple[str, str]]) -> Any:
        return track(
            targets,
            total=len(targets),
            description=f"{doing} {workflow_name} v{from_version} -> v{to_version}",
        )

    report = settings.engine().migrate(
        workflow_name,
        from_version,
        to_version,
        executions="all" if every else list(execution_ids),
        tenant=tenant,
        requested_by=requested_by,
        dry_run=dry_run,
        progress=progress,
    )
    if as_json:
        _echo_json(report.to_json())
    else:
        for line in report.lines():
            click.echo(line)
    if report.refused:
        sys.exit(EXIT_INVALID)


@cli.group(cls=_Group)
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@json_flag
@pass_settings
def upgrade_command(settings: _Settings, as_json: bool) -> None:
    """Create or upgrade the schema to this version's revision."""
    # the app's setup may register definitions or create its tables: the schema comes first
    revision = settings.engine(check_schema=False, load_app=False).store.upgrade()
    settings.load_app()
    if as_json:
        _echo_json({"revision": revision})
    else:
        click.echo(f"schema at revision {revision}")


@db.command("confine")
@click.argument("role")
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="An application table database actions use (schema.name for another schema); "
    "repeat for each. Put the tenant wall on it first (ledgerflow.store.tenant_wall).",
)
@json_flag
@pass_settings
def confine_command(settings: _Settings, role: str, tables: Sequence[str], as_json: bool) -> None:
    """Let PostgreSQL login ROLE run database actions (--action-db) without ever lifting the
    tenant wall: grants it what a step's transaction needs, and TABLEs. Run as the ledger's
    owner; ROLE must exist and be neither a superuser nor exempt from row-level security."""
    from ledgerflow.store import confine_role

    store = settings.engine().store
    with store.write() as conn:
        confine_role(conn, role, tables=tables)
    if as_json:
        _echo_json({"role": role, "tables": list(tables)})
    else:
        click.echo(
            f"role {role} is confined" + (f"; granted {', '.join(tables)}" if tables else "")
        )


@db.command("confine-prerequisites")
def confine_prerequisites_command() -> None:
    """Print the statements a superuser runs once, in the ledger's database, before `db
    confine` accepts a role: they take from every role what would let one tenant's action
    reach another's sessions or share data outside the wall."""
    from ledgerflow.store import confinement_prerequisites

    for statement in confinement_prerequisites():
        click.echo(f"{statement};")


@cli.command("start")
@click.argument("workflow_name", metavar="NAME")
@tenant_option
@click.option(
    "--version", "version", default="latest", show_default=True, help="A version number, or latest."
)
@click.option("--context", "context", default=None, help="Initial context, a JSON object.")
@json_flag
@pass_settings
def start_command(
    settings: _Settings,
    workflow_name: str,
    tenant: str,
    version: str,
    context: str | None,
    as_json: bool,
) -> None:
    """Start an execution of workflow NAME; prints its id."""
    if version != "latest" and not version.isdigit():
        raise InvalidInputError(f"--version must be a number or 'latest', not {version!r}")
    execution_id = settings.engine().create_execution(
        workflow_name,
        "latest" if version == "latest" else int(version),
        tenant=tenant,
        context=_json_option(context, "--context"),
    )
    if as_json:
        _echo_json({"execution_id": execution_id})
    else:
        click.echo(execution_id)


@cli.command("send")
@click.argument("execution_id", metavar="EXECUTION")
@click.argument("event")
@tenant_option
@click.option("--role", default=None, help="The sender's role.")
@click.option("--payload", default=None, help="The event's payload, a JSON object.")
@click.option(
    "--key", default=None, help="A client key: sending it again returns the same event id."
)
@json_flag
@pass_settings
def send_command(
    settings: _Settings,
    execution_id: str,
    event: str,
    tenant: str,
    role: str | None,
    payload: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Append EVENT to EXECUTION's ledger; prints the event id."""
    event_id = settings.engine().enqueue_event(
        execution_id,
        event,
        tenant=tenant,
        role=role,
        payload=_json_option(payload, "--payload"),
        key=key,
    )
    if as_json:
        _echo_json({"event_id": event_id})
    else:
        click.echo(event_id)


@cli.command("worker")
@metrics_options
@click.option(
    "--concurrency", default=1, show_default=True, type=click.IntRange(min=1), help="Threads."
)
@click.option("--until-idle", is_flag=True, help="Exit when no work is left.")
@click.option(
    "--lease-ttl", default=30.0, show_default=True, type=click.FloatRange(min=0.5), help="Seconds."
)
@click.option(
    "--poll-interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds.",
)
@click.option(
    "--health-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Touch this file after every heartbeat that reached the store (a liveness probe "
    "checks its age).",
)
@click.option(
    "--timer-interval",
    default=None,
    type=click.FloatRange(min=0.01),
    help="Seconds between looks for due timers [default: the poll interval].",
)
@click.option(
    "--tenant-limit",
    default=None,
    envvar="LEDGERFLOW_TENANT_LIMIT",
    type=click.IntRange(min=1),
    help="At most this many executions of one tenant in progress at once, over every worker "
    "(each worker should be given the same limit); wake-ups are then taken round-robin across "
    "tenants. [env: LEDGERFLOW_TENANT_LIMIT]",
)
@json_flag
@pass_settings
def worker_command(
    settings: _Settings,
    concurrency: int,
    until_idle: bool,
    lease_ttl: float,
    poll_interval: float,
    health_file: str | None,
    timer_interval: float | None,
    tenant_limit: int | None,
    as_json: bool,
) -> None:
    """Process pending events; SIGTERM or SIGINT stops it after the event in hand."""
    from ledgerflow.worker import Worker

    try:
        worker = Worker(
            settings.engine(),
            concurrency=concurrency,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            health_file=health_file,
            timer_interval=timer_interval,
            tenant_limit=tenant_limit,
        )
    except ValueError as exc:  # a value click's ranges let through, such as nan
        raise InvalidInputError(str(exc)) from exc

    def _stop(signum: int, _frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with serving_metrics(worker):
        stats = worker.run(until_idle=until_idle)
    failing = worker.failing
    summary = {
        "failing_executions": failing,
        "worker": worker.id,
        "executions": stats.executions,
        "events": stats.events,
        "errors": stats.errors,
    }
    if as_json:
        _echo_json(summary)
    else:
        click.echo(
            f"worker {worker.id} processed {stats.events} events in {stats.executions} executions"
        )
    if failing:
        click.echo(
            f"error: {len(failing)} execution(s) could not be processed: {', '.join(failing)}",
            err=True,
        )
        sys.exit(1)


@cli.command("health")
@json_flag
@pass_settings
def health_command(settings: _Settings, as_json: bool) -> None:
    """Check that the store (with the current schema) and the broker answer; exit 1 if not.
    For readiness probes."""
    checks: dict[str, str] = {}
    engine = settings.engine(check_schema=False, load_app=False)
    try:
        engine.store.check_schema()
        checks["store"] = "ok"
    except LedgerflowError as exc:
        checks["store"] = str(exc)
    try:
        ping = getattr(engine.transport, "ping", None)
        if callable(ping):
            ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"{type(exc).__name__}: {exc}"
    healthy = all(v == "ok" for v in checks.values())
    if as_json:
        _echo_json({"healthy": healthy, **checks})
    else:
        for name, value in checks.items():
            click.echo(f"{name}: {value}")
    if not healthy:
        sys.exit(1)


cli.add_command(status_command)


@cli.command("workers")
@click.option(
    "--dead-after",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds without a heartbeat after which a running worker counts as dead.",
)
@json_flag
@pass_settings
def workers_command(settings: _Settings, dead_after: float, as_json: bool) -> None:
    """List the workers that sent heartbeats: running, stopped, or dead (silent too long)."""
    import time

    now = time.time()
    rows = []
    for w in settings.engine().store.worker_rows():
        if w.stopped_at is not None:
            state = "stopped"
        elif now - w.last_beat > dead_after:
            state = "dead"
        else:
            state = "running"
        rows.append(
            {
                "id": w.id,
                "state": state,
                "host": w.host,
                "pid": w.pid,
                "version": w.version,
                "broker": w.broker,
                "concurrency": w.concurrency,
                "started_at": w.started_at,
                "last_beat": w.last_beat,
                "seconds_since_beat": round(now - w.last_beat, 1),
                "in_flight": w.in_flight,
                "executions": w.executions,
                "events": w.events,
                "errors": w.errors,
            }
        )
    if as_json:
        _echo_json(rows)
        return
    click.echo(f"{'worker':<44} {'state':<8} {'beat':>6} {'in flight':>9} {'events':>8} errors")
    for r in rows:
        click.echo(
            f"{r['id']:<44} {r['state']:<8} {r['seconds_since_beat']:>5}s {r['in_flight']:>9} "
            f"{r['events']:>8} {r['errors']}"
        )


@cli.group("dead-letters", cls=_Group)
def dead_letters() -> None:
    """Messages a broker transport could not deliver: list, show, retry or discard them."""


def _dead_letter_data(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant": row.tenant,
        "execution_id": row.execution_id,
        "event_id": row.event_id,
        "transport": row.transport,
        "transport_id": row.transport_id,
        "reason": row.reason,
        "deliveries": row.deliveries,
        "message": row.message,
        "created_at": row.created_at,
        "retried_at": row.retried_at,
        "discarded_at": row.discarded_at,
        "settled_by": row.settled_by,
        "settle_reason": row.settle_reason,
    }


@dead_letters.command("list")
@click.option("--all", "include_settled", is_flag=True, help="Include retried and discarded.")
@json_flag
@pass_settings
def dead_letters_list(settings: _Settings, include_settled: bool, as_json: bool) -> None:
    """List dead letters, newest first (by default those not yet retried or discarded)."""
    rows = [
        _dead_letter_data(r)
        for r in settings.engine().store.dead_letter_rows(include_settled=include_settled)
    ]
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        target = f"{r['execution_id']} event {r['event_id']}" if r["execution_id"] else "-"
        click.echo(f"{r['id']}  {target}  x{r['deliveries']}  {r['reason']}")


def _dead_letter(settings: _Settings, dead_letter_id: str) -> Any:
    row = settings.engine().store.dead_letter_row(dead_letter_id)
    if row is None:
        raise NotFoundError(f"dead letter {dead_letter_id} not found")
    return row


@dead_letters.command("show")
@click.argument("dead_letter_id", metavar="ID")
@pass_settings
def dead_letters_show(settings: _Settings, dead_letter_id: str) -> None:
    """Print one dead letter as JSON."""
    _echo_json(_dead_letter_data(_dead_letter(settings, dead_letter_id)))


def _retry_dead_letter(engine: Engine, row: Any, by: str) -> None:
    """Publish a dead letter's wake-up again and mark it retried, or raise saying why not."""
    from ledgerflow.transports import Wakeup

    if row.execution_id is None or row.event_id is None or row.tenant is None:
        raise InvalidInputError(
            f"dead letter {row.id} is a malformed message with nothing to retry; discard it"
        )
    if row.retried_at is not None or row.discarded_at is not None:
        raise InvalidInputError(f"dead letter {row.id} was already settled")
    engine.transport.publish(
        [Wakeup(execution_id=row.execution_id, tenant=row.tenant, event_id=row.event_id)]
    )
    if engine.store.settle_dead_letter(row.id, how="retried", by=by):
        audit.warning("dead letter %s retried by %s", row.id, by)


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container, say)
        return "unknown"


by_option = click.option(
    "--by",
    "requested_by",
    default=None,
    help="Who asks, for the audit log line (default: the login name).",
)


@dead_letters.command("retry")
@click.argument("dead_letter_id", metavar="ID", required=False)
@click.option(
    "--all", "every", is_flag=True, help="Every dead letter not yet settled (malformed skipped)."
)
@by_option
@pass_settings
def dead_letters_retry(
    settings: _Settings, dead_letter_id: str | None, every: bool, requested_by: str | None
) -> None:
    """Publish the dead letter's wake-up again (or every one's, with --all); its event is
    processed if still pending. Each retry is logged on ledgerflow.audit."""
    if every == (dead_letter_id is not None):
        raise InvalidInputError("name one dead letter ID, or give --all")
    by = requested_by or _operator()
    engine = settings.engine()
    if dead_letter_id is not None:
        row = _dead_letter(settings, dead_letter_id)
        _retry_dead_letter(engine, row, by)
        click.echo(f"dead letter {dead_letter_id}: wake-up of event {row.event_id} published again")
        return
    from ledgerflow.progress import track

    rows = engine.store.dead_letter_rows()
    malformed = [r.id for r in rows if r.execution_id is None or r.event_id is None]
    retryable = [r for r in rows if r.id not in malformed]
    for row in track(retryable, total=len(retryable), description="retrying dead letters"):
        _retry_dead_letter(engine, row, by)
    click.echo(f"{len(retryable)} dead letter(s) retried: their wake-ups published again")
    if malformed:
        click.echo(
            f"{len(malformed)} malformed dead letter(s) left, with nothing to retry (discard "
            f"them): {', '.join(malformed)}"
        )


@dead_letters.command("discard")
@click.argument("dead_letter_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--reason", default=None, help="Why, for the audit log line.")
@by_option
@pass_settings
def dead_letters_discard(
    settings: _Settings,
    dead_letter_id: str,
    yes: bool,
    reason: str | None,
    requested_by: str | None,
) -> None:
    """Mark a dead letter discarded (it stays on record, with when, who and why), after
    asking; who and why are also logged on ledgerflow.audit."""
    row = _dead_letter(settings, dead_letter_id)
    if row.retried_at is not None or row.discarded_at is not None:
        raise InvalidInputError(f"dead letter {dead_letter_id} was already settled")
    if not yes:
        click.confirm(f"discard dead letter {dead_letter_id} ({row.reason})?", abort=True)
    who = requested_by or _operator()
    if not settings.engine().store.settle_dead_letter(
        dead_letter_id, how="discarded", by=who, reason=reason
    ):
        raise InvalidInputError(f"dead letter {dead_letter_id} was already settled")
    audit.warning(
        "dead letter %s discarded by %s: %s (execution %s, event %s)",
        dead_letter_id,
        who,
        reason or "no reason given",
        row.execution_id or "-",
        row.event_id or "-",
    )
    click.echo(f"dead letter {dead_letter_id} discarded")


@cli.command("actions")
@json_flag
@pass_settings
def actions_command(settings: _Settings, as_json: bool) -> None:
    """List every registered action with its parameter schema."""
    described = settings.engine(check_schema=False).registry.describe()
    if as_json:
        _echo_json(described)
        return
    for action in described:
        kind = action["kind"] + (f", {action['isolation']}" if action.get("isolation") else "")
        params = ", ".join(action["parameters"].get("properties", {})) or "-"
        click.echo(f"{action['name']} ({kind}): {action['description']}\n    parameters: {params}")


@cli.command("plugins")
@json_flag
@pass_settings
def plugins_command(settings: _Settings, as_json: bool) -> None:
    """List every plugin: where it comes from, what it registered, and its errors."""
    infos = settings.engine(check_schema=False).plugins.describe()
    if as_json:
        _echo_json([info.to_json() for info in infos])
        return
    for info in infos:
        origin: str = info.source
        if info.distribution:
            origin += f", {info.distribution} {info.version or ''}".rstrip()
        state = " [disabled]" if info.disabled else ""
        click.echo(f"{info.name} ({origin}){state}")
        for kind, names in info.registered.items():
            click.echo(f"    {kind}: {', '.join(names)}")
        hooks = [h for h in info.hooks if not h.startswith("ledgerflow_register_")]
        if hooks:
            click.echo(f"    hooks: {', '.join(hooks)}")
        for problem in info.errors:
            click.echo(f"    error: {problem}")


@cli.group(cls=_Group)
def execution() -> None:
    """Look at executions, and retry failed ones."""


def _execution_data(engine: Engine, execution_id: str, tenant: str) -> dict[str, Any]:
    found = engine.get_execution(execution_id, tenant=tenant)
    return {
        "id": found.id,
        "tenant": found.tenant,
        "workflow": found.workflow,
        "version": found.version,
        "state": found.state,
        "status": found.status.value,
        "context": dict(found.context),
        "seq": found.seq,
        "decided_seq": found.decided_seq,
    }


@execution.command("show")
@click.argument("execution_id", metavar="ID")
@tenant_option
@json_flag
@pass_settings
def show_execution_command(
    settings: _Settings, execution_id: str, tenant: str, as_json: bool
) -> None:
    """Show an execution's current state and context."""
    data = _execution_data(settings.engine(), execution_id, tenant)
    if as_json:
        _echo_json(data)
        return
    click.echo(f"{data['workflow']} v{data['version']}  {data['id']}  (tenant {data['tenant']})")
    click.echo(f"state: {data['state']}  status: {data['status']}  seq: {data['seq']}")
    click.echo("context: " + json.dumps(data["context"], sort_keys=True))


def _history_data(entries: Sequence[HistoryEntry]) -> list[dict[str, Any]]:
    from ledgerflow.store.codec import encode_record

    return [
        {
            "seq": e.seq,
            "kind": e.kind,
            "event_id": e.event_id,
            "status": e.status,
            "outcome": e.outcome,
            "detail": e.detail,
            "record": encode_record(e.record)[1],
        }
        for e in entries
    ]


def _describe(entry: Mapping[str, Any]) -> str:
    body = entry["record"]
    kind = entry["kind"]
    if kind == "execution_started":
        return f"{body['workflow']} v{body['version']}"
    if kind == "event_received":
        role = f" as {body['role']}" if body.get("role") else ""
        return f"{body['name']}{role} -> {entry['status']}"
    if kind == "transition_applied":
        return f"{body['source']} -> {body['target']} ({body['transition']})"
    if kind == "event_rejected":
        return f"event {body['event_seq']}: {body['reason']}: {body['detail']}"
    if kind in ("step_succeeded", "step_compensated"):
        return f"{body['step_id']}: {json.dumps(body['result'], sort_keys=True)}"
    if kind == "step_failed":
        return f"{body['step_id']}: {body['error']} (attempts {body['attempts']})"
    if kind == "execution_failed":
        return f"event {body['event_seq']}: {body['reason']}"
    if kind == "transition_reverted":
        return f"{body['source']} -> {body['target']} ({body['transition']} undone)"
    if kind == "execution_resumed":
        by = f" by {body['requested_by']}" if body.get("requested_by") else ""
        return f"retrying event {body['retried_seq']}{by}"
    if kind == "execution_migrated":
        by = f" by {body['requested_by']}" if body.get("requested_by") else ""
        return f"v{body['from_version']} -> v{body['to_version']} in {body['state']}{by}"
    return json.dumps(body, sort_keys=True)


def _print_ledger(rows: Sequence[Mapping[str, Any]]) -> None:
    width = max((len(r["kind"]) for r in rows), default=4)
    click.echo(f"{'seq':>4}  {'record':<{width}}  detail")
    for row in rows:
        detail = _describe(row)
        if len(detail) > 90:
            detail = detail[:87] + "..."
        click.echo(f"{row['seq']:>4}  {row['kind']:<{width}}  {detail}")


@execution.command("retry")
@click.argument("execution_id", metavar="ID")
@tenant_option
@click.option("--by", "requested_by", default=None, help="Who asks, kept in the ledger.")
@json_flag
@pass_settings
def retry_command(
    settings: _Settings, execution_id: str, tenant: str, requested_by: str | None, as_json: bool
) -> None:
    """Resume a failed execution from its point of failure.

    A worker runs again the failed event's steps that have no recorded success (or finishes
    its compensation); recorded successes are not run again.
    """
    event_id = settings.engine().retry(execution_id, tenant=tenant, requested_by=requested_by)
    if as_json:
        _echo_json({"execution_id": execution_id, "event_id": event_id})
    else:
        click.echo(f"retry of {execution_id} queued as event {event_id}")


@execution.command("history")
@click.argument("execution_id", metavar="ID")
@tenant_option
@json_flag
@pass_settings
def history_command(settings: _Settings, execution_id: str, tenant: str, as_json: bool) -> None:
    """Print an execution's ledger, record by record."""
    rows = _history_data(settings.engine().history(execution_id, tenant=tenant))
    if as_json:
        _echo_json(rows)
    else:
        _print_ledger(rows)


@execution.command("timers")
@click.argument("execution_id", metavar="ID")
@tenant_option
@json_flag
@pass_settings
def timers_command(settings: _Settings, execution_id: str, tenant: str, as_json: bool) -> None:
    """List an execution's timers, in the order armed: armed, fired or cancelled."""
    found = settings.engine().timers(execution_id, tenant=tenant)
    rows = [
        {
            "id": t.id,
            "event": t.event,
            "kind": t.kind,
            "state": t.state,
            "due_at": t.due_at,
            "fired_at": t.fired_at,
            "cancelled_at": t.cancelled_at,
            "fired_event_id": t.fired_event_id,
            "payload": dict(t.payload) if t.payload is not None else None,
        }
        for t in found
    ]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo(f"execution {execution_id} has no timers")
        return
    for t in found:
        due = datetime.datetime.fromtimestamp(t.due_at, datetime.UTC).isoformat(timespec="seconds")
        fired = f" as event {t.fired_event_id}" if t.fired_event_id else ""
        click.echo(f"{t.event:<24} {t.kind:<6} {t.state:<10} due {due}{fired}")


@cli.group(cls=_Group)
def event() -> None:
    """Look at events."""


@event.command("status")
@click.argument("event_id", metavar="ID")
@tenant_option
@json_flag
@pass_settings
def event_status_command(settings: _Settings, event_id: str, tenant: str, as_json: bool) -> None:
    """Show whether an event is pending, processed, rejected or failed, and why."""
    info = settings.engine().event_status(event_id, tenant=tenant)
    data = {
        "event_id": info.event_id,
        "execution_id": info.execution_id,
        "seq": info.seq,
        "name": info.name,
        "status": info.status,
        "outcome": info.outcome,
        "detail": info.detail,
    }
    if as_json:
        _echo_json(data)
    else:
        why = f" ({info.outcome}: {info.detail})" if info.outcome else ""
        click.echo(f"{info.name} #{info.seq} of {info.execution_id}: {info.status}{why}")


EXAMPLE_APP = "ledgerflow.examples.invoice_app"
"""The InvoiceApproval example's app module as a wheel installs it (from ``contrib/``)."""


def _example_app() -> Any:
    """The InvoiceApproval example's app module: ``setup(engine)`` creates its tables and
    registers the workflow, ``rows(engine, tenant)`` reads the tables back.

    An installed wheel carries it as :data:`EXAMPLE_APP`, beside the workflow's YAML file; in a
    source checkout (an editable install) both stay in ``contrib/examples/invoice_approval``.
    """
    import importlib.util

    try:
        return importlib.import_module(EXAMPLE_APP)
    except ModuleNotFoundError as exc:
        if exc.name not in ("ledgerflow.examples", EXAMPLE_APP):
            raise  # the module is there but needs something missing: show that
    path = (
        Path(__file__).resolve().parents[2]
        / "contrib"
        / "examples"
        / "invoice_approval"
        / "invoice_app.py"
    )
    spec = importlib.util.spec_from_file_location("ledgerflow_example_invoice_app", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise LedgerflowError(
            f"the InvoiceApproval example is missing: neither {EXAMPLE_APP} nor {path} exists"
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Notifications(logging.Handler):
    """Keeps what the log notifier sends (the ``ledgerflow.notify`` logger) while the demo
    runs, without letting it reach the terminal's log handler."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.sent: list[dict[str, str]] = []
        self._logger = logging.getLogger("ledgerflow.notify")
        self._saved = (self._logger.level, self._logger.propagate)

    def emit(self, record: logging.LogRecord) -> None:
        # the notifier logs "[%s] %s" % (channel, message), with the step's key as an extra
        args = record.args
        channel, message = args if isinstance(args, tuple) and len(args) == 2 else ("", "")
        self.sent.append(
            {
                "channel": str(channel),
                "message": str(message) if args else record.getMessage(),
                "idempotency_key": str(getattr(record, "idempotency_key", "")),
            }
        )

    def __enter__(self) -> _Notifications:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]


def _print_rows(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
    click.echo(f"\n{title}")
    if not rows:
        click.echo("  (none)")
        return
    columns = [c for c in rows[0] if c != "tenant"]
    shown = [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(s[i]) for s in shown)) for i, c in enumerate(columns)]
    for line in [columns, *shown]:
        click.echo("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


DEMO_INVOICE = {"id": "INV-1001", "total": 1250.0, "customer_id": "C-42", "currency": "EUR"}
DEMO_LATE_INVOICE = {"id": "INV-1002", "total": 980.0, "customer_id": "C-7", "currency": "EUR"}


@cli.command("demo")
@json_flag
def demo_command(as_json: bool) -> None:
    """Run the InvoiceApproval example end to end on a throwaway SQLite ledger: one invoice is
    submitted and approved, its rows written to the example's invoices and payments tables;
    another waits for a decision until the demo skips its clock 48 hours ahead, when the
    escalation timer fires and a director approves it."""
    from ledgerflow.engine import Engine
    from ledgerflow.worker import Worker

    app = _example_app()
    tenant = "acme"
    clock = _SkippingClock()
    with tempfile.TemporaryDirectory(prefix="ledgerflow-demo-") as tmp, _Notifications() as sent:
        engine = Engine(f"sqlite:///{tmp}/demo.db", clock=clock)

        def work() -> None:
            Worker(engine, poll_interval=0.05).run(until_idle=True)

        try:
            engine.store.upgrade()
            app.setup(engine)  # the invoices and payments tables, and the workflow
            execution_id = engine.create_execution("InvoiceApproval", tenant=tenant)
            engine.enqueue_event(
                execution_id,
                "CreateInvoice",
                tenant=tenant,
                role="clerk",
                payload={"invoice": DEMO_INVOICE},
            )
            work()
            engine.enqueue_event(
                execution_id,
                "ApproveInvoice",
                tenant=tenant,
                role="manager",
                payload={"approved_by": "maria"},
            )
            work()
            # the second invoice: nobody decides, and 48 hours pass (the clock is skipped)
            late_id = engine.create_execution("InvoiceApproval", tenant=tenant)
            engine.enqueue_event(
                late_id,
                "CreateInvoice",
                tenant=tenant,
                role="clerk",
                payload={"invoice": DEMO_LATE_INVOICE},
            )
            work()
            clock.advance(48 * 3600)
            work()  # the escalation timer fires, and the worker processes its event
            escalated_state = engine.get_execution(late_id, tenant=tenant).state
            engine.enqueue_event(
                late_id,
                "ApproveInvoice",
                tenant=tenant,
                role="director",
                payload={"approved_by": "dmitri"},
            )
            work()
            rows = _history_data(engine.history(execution_id, tenant=tenant))
            late_rows = _history_data(engine.history(late_id, tenant=tenant))
            final = _execution_data(engine, execution_id, tenant)
            late_final = _execution_data(engine, late_id, tenant)
            consistent = all(
                _replay_matches(engine, x, tenant, data)
                for x, data in ((execution_id, final), (late_id, late_final))
            )
            tables: dict[str, list[dict[str, Any]]] = app.rows(engine, tenant)
        finally:
            engine.close()
    if as_json:
        _echo_json(
            {
                "ledger": rows,
                "execution": final,
                "escalation": {
                    "ledger": late_rows,
                    "execution": late_final,
                    "state_after_48_hours": escalated_state,
                },
                "replay_matches_projection": consistent,
                "tables": tables,
                "notifications": sent.sent,
            }
        )
        return
    click.echo(
        f"InvoiceApproval on a temporary SQLite ledger, tenant {tenant}, execution {execution_id}\n"
    )
    _print_ledger(rows)
    click.echo(f"\nfinal state: {final['state']} ({final['status']})")
    click.echo("context: " + json.dumps(final["context"], sort_keys=True))
    click.echo(
        f"\n{DEMO_LATE_INVOICE['id']}, execution {late_id}: nobody decides; the clock skips 48 "
        f"hours; the escalation timer fires ({escalated_state}); a director approves\n"
    )
    _print_ledger(late_rows)
    click.echo(f"\nfinal state: {late_final['state']} ({late_final['status']})")
    click.echo(
        "replaying the ledgers from zero gives the same states: " + ("yes" if consistent else "NO")
    )
    for name, table_rows in tables.items():
        _print_rows(f"{name} (tenant {tenant}):", table_rows)
    click.echo("\nnotifications sent (log notifier):")
    for note in sent.sent:
        click.echo(f"  [{note['channel']}] {note['message']}")


class _SkippingClock:
    """The real time, plus whatever was skipped ahead: the demo's way to let 48 hours pass."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped

    def advance(self, seconds: float) -> None:
        self.skipped += seconds


def _replay_matches(engine: Any, execution_id: str, tenant: str, data: Mapping[str, Any]) -> bool:
    """Whether replaying the execution's ledger from zero gives its stored projection."""
    replayed = engine.replay(execution_id, tenant=tenant)
    return bool(
        (replayed.name, replayed.status.value, dict(replayed.context))
        == (data["state"], data["status"], data["context"])
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``ledgerflow`` command with ``argv`` (default: the process's arguments)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="ledgerflow")
