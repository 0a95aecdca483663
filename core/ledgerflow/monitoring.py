"""The command line's monitoring: ``ledgerflow status`` and ``ledgerflow worker``'s metrics
endpoint (``--metrics-port``), kept here so ``ledgerflow.cli`` only registers them."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

from ledgerflow.status import Status, read_status

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ledgerflow.engine import Engine
    from ledgerflow.worker import Worker

__all__ = ["metrics_options", "render_status", "serving_metrics", "status_command"]

log = logging.getLogger("ledgerflow.monitoring")

F = TypeVar("F", bound=Callable[..., Any])

_META = "ledgerflow.metrics"


class _Settings(Protocol):
    """What ``ledgerflow.cli`` hands its commands: the engine of the global options."""

    def engine(self, *, check_schema: bool = True, load_app: bool = True) -> Engine: ...


# --------------------------------------------------------------------------------------------
# worker --metrics-port
# --------------------------------------------------------------------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def metrics_options(command: F) -> F:
    """Add ``--metrics-port``, ``--metrics-host`` and ``--metrics-tenant-label`` to a command;
    :func:`serving_metrics` acts on them (the command's own function does not receive them)."""
    options = [
        click.option(
            "--metrics-port",
            envvar="LEDGERFLOW_METRICS_PORT",
            default=None,
            type=click.IntRange(1, 65535),
            expose_value=False,
            callback=_remember,
            help="Serve /metrics, /healthz and /readyz on this port (off by default). "
            "[env: LEDGERFLOW_METRICS_PORT]",
        ),
        click.option(
            "--metrics-host",
            envvar="LEDGERFLOW_METRICS_HOST",
            default="0.0.0.0",
            show_default=True,
            expose_value=False,
            callback=_remember,
            help="The address the metrics endpoint listens on. [env: LEDGERFLOW_METRICS_HOST]",
        ),
        click.option(
            "--metrics-tenant-label",
            envvar="LEDGERFLOW_METRICS_TENANT_LABEL",
            is_flag=True,
            expose_value=False,
            callback=_remember,
            help="Label event and step counters with the tenant (one series per tenant: only "
            "with few tenants). [env: LEDGERFLOW_METRICS_TENANT_LABEL]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@contextlib.contextmanager
def serving_metrics(worker: Worker) -> Iterator[None]:
    """While the block runs, serve ``worker``'s metrics and probes if the current command got
    ``--metrics-port`` (see :func:`ledgerflow.metrics.serve_worker`); otherwise do nothing.
    A port already taken is one readable error, before any work starts."""
    ctx = click.get_current_context()
    chosen = ctx.meta.get(_META, {})
    port = chosen.get("metrics_port")
    if port is None:
        yield
        return
    from ledgerflow.errors import InvalidInputError
    from ledgerflow.metrics import serve_worker

    host = chosen.get("metrics_host") or "0.0.0.0"
    try:
        server = serve_worker(
            worker, port=port, host=host, tenant_label=bool(chosen.get("metrics_tenant_label"))
        )
    except OSError as exc:
        raise InvalidInputError(f"--metrics-port {port}: cannot listen on {host}: {exc}") from exc
    log.info("worker %s: metrics on http://%s:%d/metrics", worker.id, host, server.port)
    try:
        yield
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render_status(status: Status) -> RenderableType:
    """``status`` as the rich renderable ``ledgerflow status`` prints: a summary table of the
    queue, throughput, executions, dead letters and the oldest stuck event, then the workers."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    g = status.gauges
    when = datetime.datetime.fromtimestamp(status.now, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    summary = Table(title=f"ledgerflow status at {when} UTC", show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    lag_style = "red" if (g.oldest_age or 0) > 60 else "green"
    summary.add_row(
        "queue",
        Text.assemble(f"{g.queue_depth} events waiting, lag ", (_ago(g.oldest_age), lag_style)),
    )
    decided = ", ".join(f"{n} {s}" for s, n in sorted(status.decided_last_minute.items()))
    summary.add_row(
        "last minute",
        f"{status.enqueued_last_minute} enqueued; decided: {decided or 'none'} "
        f"({status.throughput:.2f}/s)",
    )
    summary.add_row(
        "executions", ", ".join(f"{n} {s}" for s, n in status.executions.items()) or "none"
    )
    alive, dead = g.workers.get("alive", 0), g.workers.get("dead", 0)
    summary.add_row(
        "workers",
        Text.assemble(
            (f"{alive} alive", "green" if alive else "red"),
            ", ",
            (f"{dead} dead", "red" if dead else ""),
            f", {g.workers.get('stopped', 0)} stopped",
        ),
    )
    summary.add_row("leases", f"{g.leases} held, {g.timers_due} timers due")
    summary.add_row(
        "dead letters", Text(str(g.dead_letters), style="red" if g.dead_letters else "")
    )
    oldest = status.oldest
    if oldest is None:
        summary.add_row("oldest stuck", "none")
    else:
        holder = f"leased by {oldest.leased_by}" if oldest.leased_by else "not leased"
        summary.add_row(
            "oldest stuck",
            f"{oldest.event or '?'} (event {oldest.event_id}, seq {oldest.seq}) of execution "
            f"{oldest.execution_id}, tenant {oldest.tenant}: {_ago(oldest.age)} old, {holder}",
        )
    workers = Table(title="workers")
    numeric = ("pid", "beat", "in flight", "events", "errors")
    for column in ("worker", "state", "host", *numeric):
        workers.add_column(
            column, justify="right" if column in numeric else "left", overflow="fold"
        )
    colours = {"alive": "green", "dead": "red", "stopped": "dim"}
    for w in status.workers:
        workers.add_row(
            w.id,
            Text(w.state, style=colours.get(w.state, "")),
            w.host,
            str(w.pid),
            _ago(w.seconds_since_beat),
            str(w.in_flight),
            str(w.events),
            str(w.errors),
        )
    return Group(summary, workers) if status.workers else Group(summary, Text("no workers yet"))


@click.command("status")
@click.option(
    "--dead-after",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds without a heartbeat after which a running worker counts as dead.",
)
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--count",
    default=None,
    type=click.IntRange(min=1),
    help="With --watch, stop after this many screens.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document (with --watch: one per line, per refresh).",
)
@click.pass_obj
def status_command(
    settings: _Settings,
    dead_after: float,
    watch: bool,
    interval: float,
    count: int | None,
    as_json: bool,
) -> None:
    """One screen: queue depth and lag, last minute's throughput, executions by status,
    workers alive and dead, the oldest stuck event, dead letters."""
    if count is not None and not watch:
        raise click.UsageError("--count goes with --watch")
    store = settings.engine(load_app=False).store

    def read() -> Status:
        return read_status(store, dead_after=dead_after)

    if not watch:
        status = read()
        if as_json:
            click.echo(json.dumps(status.to_json(), indent=2))
        else:
            from rich.console import Console

            Console().print(render_status(status))
        return
    try:
        shown = 0
        if as_json:
            while True:
                click.echo(json.dumps(read().to_json()))
                shown += 1
                if count is not None and shown >= count:
                    return
                time.sleep(interval)
        from rich.console import Console
        from rich.live import Live

        console = Console()
        with Live(render_status(read()), console=console, auto_refresh=False) as live:
            shown = 1
            while count is None or shown < count:
                time.sleep(interval)
                live.update(render_status(read()), refresh=True)
                shown += 1
    except KeyboardInterrupt:
        return
