"""Scenario 5: bad input, generated. Malformed definitions, payloads and call arguments, command
lines, and broker messages. Each one gets a typed error (a :class:`LedgerflowError`; a non-zero
exit and no traceback from the command line) or, for a broker message, a dead letter; the
process keeps running, and no row outside the dead letters is added or removed."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerflow_redis.testing import RedisServer
from ledgerflow_redis.transport import RedisTransport

from apps import chaos_app
from chaos.battery import TENANTS, Fleet, Load, Tally, check, record, size, wait_until
from ledgerflow import definitions
from ledgerflow.cli import cli
from ledgerflow.engine import Engine
from ledgerflow.errors import LedgerflowError
from ledgerflow.testing.strategies import json_values

RUN = size()
FUZZ = settings(
    max_examples=RUN.fuzz_examples,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)

# Not a single module-level counter per test: each test records its own row.
_counts: dict[str, int] = {}


def _count(what: str) -> None:
    _counts[what] = _counts.get(what, 0) + 1


@pytest.fixture
def targets(chaos: Engine) -> dict[str, str]:
    """One execution of each workflow, by workflow name (Chaos, InvoiceApproval)."""
    return {
        "Chaos": chaos.create_execution("Chaos", tenant=TENANTS[0]),
        "InvoiceApproval": chaos.create_execution("InvoiceApproval", tenant=TENANTS[0]),
    }


def unchanged_except(engine: Engine, before: dict[str, int], **allowed: int) -> None:
    """Every ledgerflow table has as many rows as ``before``, but for the ``allowed``
    differences (table name → rows added)."""
    after = engine.store.row_counts()
    expected = {t: n + allowed.get(t, 0) for t, n in before.items()}
    assert after == expected, {t: (expected[t], after[t]) for t in after if after[t] != expected[t]}


# ----------------------------------------------------------------------------------------------
# Definitions
# ----------------------------------------------------------------------------------------------

_PATHS = [
    (),
    ("name",),
    ("version",),
    ("initial_state",),
    ("states",),
    ("terminal_states",),
    ("transitions",),
    ("transitions", 0),
    ("transitions", 0, "from"),
    ("transitions", 0, "to"),
    ("transitions", 0, "on"),
    ("transitions", 0, "set"),
    ("transitions", 0, "steps"),
    ("transitions", 0, "steps", 0),
    ("transitions", 0, "steps", 0, "action"),
    ("transitions", 0, "steps", 0, "params"),
    ("transitions", 0, "steps", 0, "params", "n"),
    ("transitions", 0, "steps", 0, "params", "n", "expr"),
    ("transitions", 1, "from"),
]

_weird: st.SearchStrategy[Any] = st.one_of(
    json_values(),
    st.sampled_from(
        [
            "",
            "open",
            "closed",
            "missing.action",
            {"expr": "payload.n +"},
            {"expr": "context.nope.deeper"},
            {"expr": "1/0"},
            [],
            {},
            -1,
            2**63,
            None,
            "x" * 5000,
        ]
    ),
)


@st.composite
def malformed_definitions(draw: st.DrawFn) -> Any:
    """The Chaos workflow with one to three parts replaced, removed or joined by an unknown
    key; or any JSON value at all."""
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(json_values())
    body: Any = copy.deepcopy(chaos_app.WORKFLOW)
    body["version"] = draw(st.integers(min_value=2, max_value=10**6))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_PATHS))
        if not path:
            body[draw(st.text(min_size=1, max_size=8))] = draw(_weird)
            continue
        parent: Any = body
        try:
            for part in path[:-1]:
                parent = parent[part]
            how = draw(st.sampled_from(["replace", "remove", "extra"]))
            if how == "remove" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif how == "extra" and isinstance(parent, dict):
                parent["unexpected_" + draw(st.text(max_size=5))] = draw(_weird)
            else:
                parent[path[-1]] = draw(_weird)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation took the path away
    return body


def test_malformed_definitions_get_a_typed_error_and_write_nothing(chaos: Engine) -> None:
    started = time.monotonic()
    outcomes = {"refused": 0, "accepted": 0}

    @FUZZ
    @given(body=malformed_definitions())
    def attempt(body: Any) -> None:
        before = chaos.store.row_counts()
        known = {(d["name"], d["version"]) for d in chaos.list_definitions()}
        try:
            compiled = definitions.compile_workflow(definitions.parse(body))
            chaos.register(compiled)
        except LedgerflowError:
            outcomes["refused"] += 1
            unchanged_except(chaos, before)
        else:
            # still a valid workflow: registered under its new version and nothing else, or,
            # drawn again with a body registered already, nothing at all
            outcomes["accepted"] += 1
            again = (compiled.name, compiled.version) in known
            unchanged_except(chaos, before, lf_definitions=0 if again else 1)

    attempt()
    _record_outcomes("fuzz: malformed definitions", outcomes, started)


def _record_outcomes(scenario: str, outcomes: dict[str, int], started: float) -> None:
    """The row of a fuzzing scenario whose inputs were refused with a typed error or
    accepted: every one is a fault injected, none an event."""
    record(
        scenario,
        Tally(events=0),
        faults=sum(outcomes.values()),
        seconds=time.monotonic() - started,
        notes=[
            f"{outcomes['refused']} refused with a typed error",
            f"{outcomes['accepted']} valid",
        ],
    )


# ----------------------------------------------------------------------------------------------
# Payloads and call arguments
# ----------------------------------------------------------------------------------------------

_not_json = st.sampled_from(
    [float("nan"), float("inf"), {1, 2}, b"bytes", object(), {"k": {1: "x"}}, {"deep": [[[[]]]]}]
)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"a": [value]}
    return value


payloads = st.one_of(
    json_values(),
    st.dictionaries(st.text(max_size=10), st.one_of(json_values(), _not_json), max_size=4),
    st.builds(lambda total: {"invoice": {"id": "I", "customer_id": "C", "total": total}}, _weird),
    st.just(_nested(2000)),
    _not_json,
)
names = st.one_of(
    st.sampled_from(["Hit", "Close", "CreateInvoice", "ApproveInvoice", "EscalationDue", ""]),
    st.text(max_size=300),
    st.integers(),
    st.none(),
)
tenants = st.one_of(st.sampled_from([*TENANTS, "*", "", "  ", "other"]), st.text(max_size=300))


def test_bad_payloads_and_arguments_get_a_typed_error_and_write_nothing(
    chaos: Engine, targets: dict[str, str]
) -> None:
    started = time.monotonic()
    outcomes = {"refused": 0, "accepted": 0}

    @FUZZ
    @given(
        workflow=st.sampled_from(sorted(targets)),
        event=names,
        payload=payloads,
        tenant=tenants,
        role=st.one_of(st.none(), st.sampled_from(["clerk", "manager"]), st.text(max_size=300)),
        key=st.one_of(st.none(), st.text(max_size=300), st.integers()),
    )
    def attempt(workflow: str, event: Any, payload: Any, tenant: Any, role: Any, key: Any) -> None:
        before = chaos.store.row_counts()
        try:
            chaos.enqueue_event(
                targets[workflow], event, tenant=tenant, role=role, payload=payload, key=key
            )
        except LedgerflowError:
            outcomes["refused"] += 1
            unchanged_except(chaos, before)
        else:
            outcomes["accepted"] += 1
            assert tenant == TENANTS[0]
            # one event and its outbox row, or nothing at all for a client key seen before
            after = chaos.store.row_counts()
            assert after["lf_events"] - before["lf_events"] in (0, 1)
            unchanged_except(
                chaos,
                before,
                lf_events=after["lf_events"] - before["lf_events"],
                lf_outbox=after["lf_events"] - before["lf_events"],
            )

    attempt()
    _record_outcomes("fuzz: payloads and call arguments", outcomes, started)


# ----------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------

garbage = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40
)


@st.composite
def command_lines(draw: st.DrawFn, execution: str) -> list[str]:
    """A ledgerflow command with wrong, missing or garbled arguments (never one that would
    start a worker: its numeric options are drawn out of range)."""
    tenant = draw(st.one_of(st.sampled_from(["", "*", "other", "  "]), garbage))
    json_text = draw(
        st.one_of(garbage, st.builds(json.dumps, json_values()), st.just("{"), st.just("[]"))
    )
    target = draw(st.one_of(st.just(execution), garbage))
    choices = [
        ["send", target, draw(garbage), "--tenant", tenant, "--payload", json_text],
        ["send", execution, "Hit", "--tenant", "other", "--payload", json_text],
        ["start", draw(garbage), "--tenant", tenant, "--context", json_text],
        ["start", "Chaos", "--tenant", draw(st.sampled_from(["", "*", " "]))],
        ["execution", "show", target, "--tenant", tenant],
        ["execution", "history", target, "--tenant", tenant],
        ["execution", "retry", target, "--tenant", tenant],
        ["execution", "timers", target, "--tenant", tenant],
        ["event", "status", draw(garbage), "--tenant", tenant],
        ["workflow", "register", draw(garbage)],
        ["workflow", "show", draw(garbage)],
        ["dead-letters", "show", draw(garbage)],
        ["dead-letters", "retry", draw(garbage)],
        ["dead-letters", "discard", draw(garbage), "--reason", "r", "--yes"],
        ["worker", "--concurrency", str(draw(st.integers(max_value=0)))],
        ["worker", "--lease-ttl", str(draw(st.floats(max_value=0.49, allow_nan=False)))],
        ["worker", "--poll-interval", draw(st.sampled_from(["-1", "0", "soon", "nan"]))],
        [draw(garbage), draw(garbage)],
    ]
    return draw(st.sampled_from(choices))


def test_bad_command_lines_exit_with_an_error_and_write_nothing(
    chaos: Engine, targets: dict[str, str]
) -> None:
    started = time.monotonic()
    runner = CliRunner()
    db = ["--db", chaos.store.url]
    exits: dict[int, int] = {}

    @settings(FUZZ, max_examples=max(10, RUN.fuzz_examples // 2))
    @given(args=command_lines(targets["Chaos"]))
    def attempt(args: list[str]) -> None:
        before = chaos.store.row_counts()
        result = runner.invoke(cli, [*db, *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args,
            result.output,
            result.exception,
        )
        assert "Traceback" not in result.output, result.output
        assert result.exit_code != 0, (args, result.output)
        exits[result.exit_code] = exits.get(result.exit_code, 0) + 1
        unchanged_except(chaos, before)

    attempt()
    record(
        "fuzz: command lines",
        Tally(events=0),
        faults=sum(exits.values()),
        seconds=time.monotonic() - started,
        notes=[", ".join(f"{n} exited {code}" for code, n in sorted(exits.items()))],
    )


# ----------------------------------------------------------------------------------------------
# Broker messages
# ----------------------------------------------------------------------------------------------

_text = st.text(max_size=30)


@st.composite
def broker_messages(draw: st.DrawFn, execution: str, tenant: str) -> dict[bytes, bytes]:
    """A stream entry no client published: garbage fields, or a wake-up that almost parses,
    or one naming an execution that does not exist or another tenant's execution."""
    kind = draw(st.sampled_from(["garbage", "almost", "unknown", "foreign"]))
    if kind == "garbage":
        fields = draw(
            st.dictionaries(
                st.one_of(st.binary(min_size=1, max_size=12), _text.map(str.encode)),
                st.one_of(st.binary(max_size=20), _text.map(str.encode)),
                min_size=1,
                max_size=5,
            )
        )
        return fields
    message = {"v": "1", "execution_id": execution, "tenant": tenant, "event_id": "e"}
    if kind == "almost":
        field = draw(st.sampled_from(sorted(message)))
        message[field] = draw(st.sampled_from(["", "2", "1.0", " "]) | _text)
        if draw(st.booleans()):
            message[draw(_text)] = draw(_text)
    elif kind == "unknown":
        message["execution_id"] = draw(st.text(min_size=1, max_size=64))
    else:
        message["tenant"] = draw(st.sampled_from([t for t in TENANTS if t != tenant]))
    return {k.encode(): v.encode() for k, v in message.items()}


def _entry_id(raw: bytes | str) -> tuple[int, int]:
    """A stream entry id (``1700000000000-3``) as a pair that orders like the stream."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


@pytest.fixture
def fuzz_broker(redis_server: RedisServer) -> str:
    """The broker with few deliveries before a dead letter, taken over quickly."""
    return redis_server.url(streams=2, claim_idle=0.3, claim_every=0.2, max_deliveries=3)


@pytest.fixture
def fuzz_fleet(chaos_db: str, fuzz_broker: str, tmp_path: Path) -> Iterator[Fleet]:
    """One worker of the fuzzing broker."""
    workers = Fleet(chaos_db, fuzz_broker, tmp_path)
    workers.spawn()
    yield workers
    workers.close()


def test_bad_broker_messages_are_dead_lettered_and_the_worker_goes_on(
    chaos_db: str, fuzz_broker: str, fuzz_fleet: Fleet, redis_server: RedisServer
) -> None:
    started = time.monotonic()
    engine = Engine(chaos_db, broker=fuzz_broker)
    chaos_app.setup(engine)
    load = Load(engine=engine)
    executions = load.create(2)
    load.hits_in_turn(executions, 2)
    load.wait_processed(fuzz_fleet, RUN.deadline)
    transport = RedisTransport(fuzz_broker)
    injected = 0
    client = redis_server.client()

    newest: dict[str, tuple[int, int]] = {}
    """The id of the last entry injected into each stream."""

    def handled() -> bool:
        """Every entry injected delivered, and acknowledged or dead-lettered (a dead-lettered
        entry is deleted from its stream, so the group's last delivered id tells)."""
        assert fuzz_fleet.alive, fuzz_fleet.log()
        for stream in transport.streams:
            try:
                groups = client.xinfo_groups(stream)
            except redis.ResponseError:
                return False  # no group yet
            if not groups or groups[0]["pending"]:
                return False
            if _entry_id(groups[0]["last-delivered-id"]) < newest.get(stream, (0, 0)):
                return False
        return True

    wait_until(handled, timeout=RUN.deadline, what="the first wake-ups handled")

    @settings(FUZZ, max_examples=max(5, RUN.fuzz_examples // 5))
    @given(
        batch=st.lists(
            broker_messages(executions[0], load.executions[executions[0]]), min_size=1, max_size=8
        )
    )
    def attempt(batch: list[dict[bytes, bytes]]) -> None:
        nonlocal injected
        before = engine.store.row_counts()
        for fields in batch:
            stream = transport.streams[injected % 2]
            newest[stream] = _entry_id(client.xadd(stream, fields))  # type: ignore[arg-type]
            injected += 1
        wait_until(handled, timeout=RUN.deadline, what="every injected message handled")
        after = engine.store.row_counts()
        # every table but the dead letters is unchanged: a wake-up naming an execution that
        # does not exist leaves no lease row behind either
        unchanged_except(
            engine, before, lf_dead_letters=after["lf_dead_letters"] - before["lf_dead_letters"]
        )

    try:
        attempt()
        # the worker still works: a client's events are processed, in order, exactly once
        load.hits_in_turn(executions, 3)
        load.wait_processed(fuzz_fleet, RUN.deadline)
        from chaos.battery import audit

        tally = audit(load)
        letters = len(engine.store.dead_letter_rows())
    finally:
        client.close()
        transport.close()
        engine.close()
    assert fuzz_fleet.alive, fuzz_fleet.log()
    record(
        "fuzz: broker messages",
        tally,
        faults=injected,
        seconds=time.monotonic() - started,
        notes=[
            f"{injected} injected",
            f"{letters} dead letters",
        ],
    )
    check(tally, fuzz_fleet)
