"""Workflow versions side by side: what changed between two, and moving executions to a newer one.

Every registered version is immutable, and every execution is pinned to the version it started
on (``latest`` is resolved once, when the execution is created). :func:`diff_workflows` says
what changed between two versions. :func:`migrate`, behind :meth:`ledgerflow.engine.Engine.migrate`,
moves chosen executions to a newer version, recording an
:class:`~ledgerflow.model.ExecutionMigrated` in each one's ledger, or says why it will not; in
a dry run it writes nothing and replays each ledger under the new version to show where it
would have gone differently.
"""

from __future__ import annotations

import enum
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs
import sqlalchemy as sa

from ledgerflow import machine
from ledgerflow.definitions import Definition, to_data
from ledgerflow.errors import ExpressionError, InvalidInputError, LedgerError, LedgerflowError
from ledgerflow.model import (
    JSON,
    Accepted,
    EventReceived,
    EventRejected,
    ExecutionMigrated,
    ExecutionStarted,
    Record,
    State,
    Status,
    TransitionApplied,
    TransitionReverted,
    Workflow,
)
from ledgerflow.store.sql import ALL_TENANTS, SQLStore
from ledgerflow.transports import Wakeup

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = [
    "Divergence",
    "DivergenceKind",
    "FieldChange",
    "ItemChange",
    "MigrationOutcome",
    "MigrationRefusal",
    "MigrationReport",
    "WorkflowDiff",
    "diff_workflows",
    "migrate",
    "replay_divergence",
]

log = logging.getLogger("ledgerflow.versioning")

ChangeKind: TypeAlias = Literal["added", "removed", "changed"]
Target: TypeAlias = tuple[str, str]
"""An execution to migrate: ``(execution_id, tenant)``."""

_MARK: dict[str, str] = {"added": "+", "removed": "-", "changed": "~"}
_LEASE_TTL = 30.0
_COMMIT_ATTEMPTS = 5
_SHOWN = 160


# --------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------


def _shown(value: JSON) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=False)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _same(before: JSON, after: JSON) -> bool:
    # 1 == True and 1 == 1.0 in Python; JSON tells them apart
    return json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True)


@attrs.frozen(kw_only=True)
class FieldChange:
    """One field that differs between two versions: ``path`` names it (``condition``,
    ``params.values.status``, ``payload.properties.total.minimum``), ``change`` says whether
    it was added, removed or changed, and ``before`` / ``after`` hold its JSON values (``None``
    on the side where it is absent)."""

    path: str
    change: ChangeKind
    before: JSON = None
    after: JSON = None

    def to_json(self) -> dict[str, JSON]:
        """The change as JSON: ``path`` and ``change``, with ``before`` unless it was added
        and ``after`` unless it was removed."""
        data: dict[str, JSON] = {"path": self.path, "change": self.change}
        if self.change != "added":
            data["before"] = self.before
        if self.change != "removed":
            data["after"] = self.after
        return data

    def __str__(self) -> str:
        if self.change == "added":
            return f"{self.path}: added {_shown(self.after)}"
        if self.change == "removed":
            return f"{self.path}: removed (was {_shown(self.before)})"
        return f"{self.path}: {_shown(self.before)} -> {_shown(self.after)}"


@attrs.frozen(kw_only=True)
class ItemChange:
    """A state, event, transition or step added, removed or changed between two versions.

    ``name`` identifies it (a transition by its ``name``, else by its event and source states;
    a step by its id); ``summary`` describes it in a few words; ``fields`` lists what changed in
    it and, for a transition, ``steps`` how its steps changed.
    """

    name: str
    change: ChangeKind
    summary: str = ""
    fields: tuple[FieldChange, ...] = ()
    steps: tuple[ItemChange, ...] = ()

    def to_json(self) -> dict[str, JSON]:
        """The change as JSON: ``name``, ``change``, ``summary``, ``fields`` and ``steps``."""
        return {
            "name": self.name,
            "change": self.change,
            "summary": self.summary,
            "fields": [f.to_json() for f in self.fields],
            "steps": [s.to_json() for s in self.steps],
        }

    def lines(self, indent: str = "  ") -> list[str]:
        """The change as indented lines for people."""
        head = f"{indent}{_MARK[self.change]} {self.name}"
        if self.summary:
            head += f" ({self.summary})"
        out = [head]
        out += [f"{indent}    {f}" for f in self.fields]
        if self.steps:
            out.append(f"{indent}    steps:")
            for step in self.steps:
                out += step.lines(indent + "      ")
        return out


@attrs.frozen(kw_only=True)
class WorkflowDiff:
    """What changed from one version of a workflow to another.

    ``workflow`` holds changes to the top level (``description``, ``initial_state``, the name
    itself when two workflows are compared); ``states``, ``events`` and ``transitions`` the
    elements added, removed or changed, in the order the definitions write them (removed and
    changed ones in the old version's order, then added ones in the new version's).
    """

    name: str
    old_version: int
    new_version: int
    workflow: tuple[FieldChange, ...] = ()
    states: tuple[ItemChange, ...] = ()
    events: tuple[ItemChange, ...] = ()
    transitions: tuple[ItemChange, ...] = ()

    @property
    def unchanged(self) -> bool:
        """Whether the two versions differ in nothing but their version number."""
        return not (self.workflow or self.states or self.events or self.transitions)

    def to_json(self) -> dict[str, JSON]:
        """The diff as one JSON document."""
        return {
            "workflow": self.name,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "unchanged": self.unchanged,
            "changes": [c.to_json() for c in self.workflow],
            "states": [c.to_json() for c in self.states],
            "events": [c.to_json() for c in self.events],
            "transitions": [c.to_json() for c in self.transitions],
        }

    def lines(self) -> list[str]:
        """The diff as lines for people: a title, then one section per kind of element that
        changed, each element marked ``+`` (added), ``-`` (removed) or ``~`` (changed) and
        followed by what changed in it."""
        title = f"{self.name} v{self.old_version} -> v{self.new_version}"
        if self.unchanged:
            return [f"{title}: no changes besides the version number"]
        out = [title]
        out += [f"  {c}" for c in self.workflow]
        for section, items in (
            ("states", self.states),
            ("events", self.events),
            ("transitions", self.transitions),
        ):
            if items:
                out.append(section)
                for item in items:
                    out += item.lines()
        return out


def diff_workflows(old: Workflow | Definition, new: Workflow | Definition) -> WorkflowDiff:
    """What changed from ``old`` to ``new`` (usually two versions of one workflow).

    Compares the canonical forms (:func:`ledgerflow.definitions.to_data`), so only what the
    definitions say counts, not how they were written: states added or removed, or made
    terminal or not; events added or removed, or with a changed description or payload schema
    (down to each changed schema keyword); transitions added or removed, or with a changed
    source, target, event, condition, roles, assignments, timer or steps; steps added, removed
    or with a changed action, parameters, dependencies, error strategy or compensation.
    Transitions are matched by ``name``, unnamed ones by event and source states; steps by id.
    """
    before, after = to_data(old), to_data(new)
    top = tuple(
        change
        for key in ("name", "description", "initial_state")
        for change in _json_changes(key, before.get(key, ""), after.get(key, ""))
    )
    return WorkflowDiff(
        name=str(after["name"]),
        old_version=int(before["version"]),
        new_version=int(after["version"]),
        workflow=top,
        states=_state_changes(before, after),
        events=_event_changes(before, after),
        transitions=_transition_changes(before, after),
    )


def _json_changes(path: str, before: JSON, after: JSON) -> list[FieldChange]:
    """The leaves where two JSON values differ: mappings are compared key by key, anything
    else as a whole."""
    if _same(before, after):
        return []
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        found: list[FieldChange] = []
        for key in [*before, *(k for k in after if k not in before)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in after:
                found.append(FieldChange(path=where, change="removed", before=before[key]))
            elif key not in before:
                found.append(FieldChange(path=where, change="added", after=after[key]))
            else:
                found += _json_changes(where, before[key], after[key])
        return found
    return [FieldChange(path=path, change="changed", before=before, after=after)]


def _matched(
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], str],
) -> list[tuple[str, Mapping[str, Any] | None, Mapping[str, Any] | None]]:
    """Pair the elements of two lists by ``key``: removed and kept ones in ``before``'s order,
    then added ones in ``after``'s. A key used twice in a list is told apart by a counter."""

    def keyed(items: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        out: dict[str, Mapping[str, Any]] = {}
        for item in items:
            name = key(item)
            n = 1
            while (name if n == 1 else f"{name} ({n})") in out:
                n += 1
            out[name if n == 1 else f"{name} ({n})"] = item
        return out

    old, new = keyed(before), keyed(after)
    pairs: list[tuple[str, Mapping[str, Any] | None, Mapping[str, Any] | None]] = [
        (name, item, new.get(name)) for name, item in old.items()
    ]
    pairs += [(name, None, item) for name, item in new.items() if name not in old]
    return pairs


def _state_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[ItemChange, ...]:
    def states(data: Mapping[str, Any]) -> list[dict[str, Any]]:
        terminal = set(data.get("terminal_states", ()))
        return [{"name": s, "terminal": s in terminal} for s in data["states"]]

    found: list[ItemChange] = []
    for name, old, new in _matched(states(before), states(after), lambda s: str(s["name"])):
        if new is None:
            found.append(ItemChange(name=name, change="removed"))
        elif old is None:
            summary = "terminal" if new["terminal"] else ""
            found.append(ItemChange(name=name, change="added", summary=summary))
        elif old["terminal"] != new["terminal"]:
            found.append(
                ItemChange(
                    name=name,
                    change="changed",
                    summary="now terminal" if new["terminal"] else "no longer terminal",
                    fields=tuple(_json_changes("terminal", old["terminal"], new["terminal"])),
                )
            )
    return tuple(found)


def _event_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[ItemChange, ...]:
    def events(data: Mapping[str, Any]) -> list[dict[str, Any]]:
        declared: Mapping[str, Any] = data.get("events", {})
        names = [*declared, *(t["on"] for t in data.get("transitions", ()))]
        return [{"name": n, **declared.get(n, {})} for n in dict.fromkeys(names)]

    found: list[ItemChange] = []
    for name, old, new in _matched(events(before), events(after), lambda e: str(e["name"])):
        if new is None or old is None:
            found.append(ItemChange(name=name, change="removed" if new is None else "added"))
            continue
        fields = _json_changes("", _without(old, "name"), _without(new, "name"))
        if fields:
            found.append(ItemChange(name=name, change="changed", fields=tuple(fields)))
    return tuple(found)


def _without(data: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


def _transition_key(t: Mapping[str, Any]) -> str:
    if "name" in t:
        return str(t["name"])
    return f"{t['on']} from {', '.join(t['from'])}"


def _transition_summary(t: Mapping[str, Any]) -> str:
    return f"{t['on']}: {', '.join(t['from'])} -> {t['to']}"


def _transition_changes(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[ItemChange, ...]:
    found: list[ItemChange] = []
    pairs = _matched(before.get("transitions", ()), after.get("transitions", ()), _transition_key)
    for name, old, new in pairs:
        if new is None or old is None:
            shown = old if new is None else new
            assert shown is not None
            change: ChangeKind = "removed" if new is None else "added"
            found.append(ItemChange(name=name, change=change, summary=_transition_summary(shown)))
            continue
        fields = _json_changes("", _without(old, "steps", "name"), _without(new, "steps", "name"))
        steps = _step_changes(old.get("steps", ()), new.get("steps", ()))
        if fields or steps:
            found.append(
                ItemChange(
                    name=name,
                    change="changed",
                    summary=_transition_summary(new),
                    fields=tuple(fields),
                    steps=steps,
                )
            )
    return tuple(found)


def _step_changes(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]
) -> tuple[ItemChange, ...]:
    found: list[ItemChange] = []
    for name, old, new in _matched(before, after, lambda s: str(s["id"])):
        if new is None or old is None:
            shown = old if new is None else new
            assert shown is not None
            change: ChangeKind = "removed" if new is None else "added"
            found.append(ItemChange(name=name, change=change, summary=str(shown["action"])))
            continue
        fields = _json_changes("", _without(old, "id"), _without(new, "id"))
        if fields:
            found.append(
                ItemChange(
                    name=name, change="changed", summary=str(new["action"]), fields=tuple(fields)
                )
            )
    return tuple(found)


# --------------------------------------------------------------------------------------------
# Replaying a ledger under another version
# --------------------------------------------------------------------------------------------


class DivergenceKind(enum.StrEnum):
    """How a ledger would have gone differently under another version."""

    INITIAL_STATE = "initial_state"
    """The new version starts executions in another state."""
    STATE_MISSING = "state_missing"
    """The ledger is in a state the new version does not have."""
    REJECTED = "rejected"
    """An event the old version applied, the new one rejects."""
    APPLIED = "applied"
    """An event the old version rejected, the new one applies."""
    DIFFERENT_TARGET = "different_target"
    """Both versions apply the event, but move to different states."""
    DIFFERENT_CONTEXT = "different_context"
    """Both versions apply the event into the same state, but set the context differently."""
    UNREPLAYABLE = "unreplayable"
    """A record of the ledger cannot be folded under the new version."""


@attrs.frozen(kw_only=True)
class Divergence:
    """The first point where a ledger replayed under another version goes differently: the
    ``seq`` of the event (or record) concerned, the event's name if any, what differs and a
    sentence for people."""

    seq: int
    event: str | None
    kind: DivergenceKind
    detail: str

    def to_json(self) -> dict[str, JSON]:
        """The divergence as JSON."""
        return {
            "seq": self.seq,
            "event": self.event,
            "kind": self.kind.value,
            "detail": self.detail,
        }


def replay_divergence(
    records: Sequence[Record],
    old: Definition,
    new: Definition,
    *,
    versions: Callable[[int], Definition] | None = None,
) -> Divergence | None:
    """Where the ledger ``records`` of an execution now on ``old`` would have gone differently
    had its events been decided under ``new``; ``None`` if nowhere.

    The stretch of the ledger spent on ``old`` (from its start, or from the migration that
    brought it to ``old``; ``versions`` gives the definitions of earlier versions to fold what
    came before) is replayed under ``new``: every client or timer event that was decided is
    decided again, from the state replayed so far, and compared with what the ledger recorded
    (applied or rejected, the target state, the context); every other record (step outcomes,
    context updates, failures, reversals) is taken as recorded. The first difference is
    returned. Nothing is run and nothing is written: this is a pure function of its arguments.
    Raises :class:`LedgerError` for a ledger that does not start with ``execution_started``.
    """
    if not records or not isinstance(records[0], ExecutionStarted):
        raise LedgerError("a ledger starts with execution_started")
    start = 0
    for i, record in enumerate(records):
        if isinstance(record, ExecutionMigrated) and record.to_version == old.version:
            start = i
    state: State
    if start == 0:
        first = records[0]
        assert isinstance(first, ExecutionStarted)
        if new.workflow.initial_state != old.workflow.initial_state:
            return Divergence(
                seq=1,
                event=None,
                kind=DivergenceKind.INITIAL_STATE,
                detail=f"v{new.version} starts in {new.workflow.initial_state!r}, the ledger "
                f"started in {old.workflow.initial_state!r}",
            )
        state = machine.fold(new, [attrs.evolve(first, version=new.version)])
    else:
        try:
            state = machine.fold(old, records[: start + 1], versions=versions)
        except LedgerError as exc:
            return Divergence(
                seq=records[start].seq,
                event=None,
                kind=DivergenceKind.UNREPLAYABLE,
                detail=str(exc),
            )
        if state.name not in new.workflow.states:
            return _missing(state, new, records[start].seq)
        state = attrs.evolve(state, version=new.version)
    events = {r.seq: r for r in records[start + 1 :] if isinstance(r, EventReceived)}
    for record in records[start + 1 :]:
        if isinstance(record, TransitionApplied | EventRejected):
            event = events.get(record.event_seq)
            if event is not None and event.origin != "system":
                found = _compare(old, new, state, event, record)
                if found is not None:
                    return found
        try:
            state = machine.apply(new, state, record)
        except LedgerError as exc:
            return Divergence(
                seq=record.seq, event=None, kind=DivergenceKind.UNREPLAYABLE, detail=str(exc)
            )
    if state.name not in new.workflow.states:
        return _missing(state, new, state.seq)
    return None


def _missing(state: State, new: Definition, seq: int) -> Divergence:
    return Divergence(
        seq=seq,
        event=None,
        kind=DivergenceKind.STATE_MISSING,
        detail=f"state {state.name!r} does not exist in {new.name} v{new.version}",
    )


def _compare(
    old: Definition,
    new: Definition,
    state: State,
    event: EventReceived,
    recorded: TransitionApplied | EventRejected,
) -> Divergence | None:
    """How deciding ``event`` under ``new`` differs from what the ledger recorded, if it
    does."""
    decision = machine.decide(new, state, event)

    def diverged(kind: DivergenceKind, detail: str) -> Divergence:
        return Divergence(seq=event.seq, event=event.name, kind=kind, detail=detail)

    if isinstance(recorded, EventRejected):
        if isinstance(decision, Accepted):
            return diverged(
                DivergenceKind.APPLIED,
                f"v{old.version} rejected it ({recorded.reason.value}); v{new.version} would "
                f"apply it: {decision.source} -> {decision.target} ({decision.transition})",
            )
        return None
    if not isinstance(decision, Accepted):
        return diverged(
            DivergenceKind.REJECTED,
            f"v{old.version} applied it: {recorded.source} -> {recorded.target}; "
            f"v{new.version} would reject it ({decision.reason.value}: {decision.detail})",
        )
    if decision.target != recorded.target:
        return diverged(
            DivergenceKind.DIFFERENT_TARGET,
            f"v{old.version} moved to {recorded.target!r}; v{new.version} would move to "
            f"{decision.target!r}",
        )
    if not _same(dict(decision.context), dict(recorded.context)):
        keys = sorted(
            k
            for k in {*decision.context, *recorded.context}
            if k not in decision.context
            or k not in recorded.context
            or not _same(decision.context[k], recorded.context[k])
        )
        return diverged(
            DivergenceKind.DIFFERENT_CONTEXT,
            f"v{new.version} would set the context differently: {', '.join(keys)}",
        )
    return None


# --------------------------------------------------------------------------------------------
# Migration
# --------------------------------------------------------------------------------------------


class MigrationRefusal(enum.StrEnum):
    """Why an execution was not migrated."""

    NOT_FOUND = "not_found"
    """No execution with this id exists for the tenant."""
    NOT_ON_VERSION = "not_on_version"
    """The execution is of another workflow, or on another version than the one migrated
    from (it may have been migrated already)."""
    COMPLETED = "completed"
    """The execution is completed: there is nothing left to run under any version."""
    FAILED = "failed"
    """The execution is failed: a retry resumes it under the version whose transition failed,
    so it must be retried (or compensated) first."""
    EVENTS_PENDING = "events_pending"
    """Events wait in its ledger to be decided under the version they were accepted for."""
    BUSY = "busy"
    """A worker holds the execution's lease right now."""
    STATE_MISSING = "state_missing"
    """The new version has no state of the execution's current state's name."""
    STATE_TERMINAL = "state_terminal"
    """The current state is terminal in the new version: the execution would end without a
    transition."""


@attrs.frozen(kw_only=True)
class MigrationOutcome:
    """What migrating one execution did, or in a dry run would do.

    ``migrated`` says it was (would be) moved, ``seq`` is then the seq of its
    :class:`~ledgerflow.model.ExecutionMigrated` record (``None`` in a dry run); otherwise
    ``refusal`` and ``detail`` say why not. ``state`` and ``status`` are the execution's as
    found. In a dry run, ``divergence`` is the first point where its ledger, replayed under the
    new version, goes differently (see :func:`replay_divergence`).
    """

    execution_id: str
    tenant: str
    migrated: bool
    state: str | None = None
    status: str | None = None
    seq: int | None = None
    refusal: MigrationRefusal | None = None
    detail: str = ""
    divergence: Divergence | None = None

    def to_json(self) -> dict[str, JSON]:
        """The outcome as JSON."""
        return {
            "execution_id": self.execution_id,
            "tenant": self.tenant,
            "migrated": self.migrated,
            "state": self.state,
            "status": self.status,
            "seq": self.seq,
            "refusal": None if self.refusal is None else self.refusal.value,
            "detail": self.detail,
            "divergence": None if self.divergence is None else self.divergence.to_json(),
        }


@attrs.frozen(kw_only=True)
class MigrationReport:
    """What a migration of ``workflow`` from ``from_version`` to ``to_version`` did (or, with
    ``dry_run``, would do) to each chosen execution, in the order they were chosen."""

    workflow: str
    from_version: int
    to_version: int
    dry_run: bool
    outcomes: tuple[MigrationOutcome, ...]

    @property
    def migrated(self) -> tuple[MigrationOutcome, ...]:
        """The executions migrated (in a dry run: that would be)."""
        return tuple(o for o in self.outcomes if o.migrated)

    @property
    def refused(self) -> tuple[MigrationOutcome, ...]:
        """The executions refused, each with its reason."""
        return tuple(o for o in self.outcomes if not o.migrated)

    @property
    def diverging(self) -> tuple[MigrationOutcome, ...]:
        """In a dry run, the executions whose ledger goes differently under the new version."""
        return tuple(o for o in self.outcomes if o.divergence is not None)

    def to_json(self) -> dict[str, JSON]:
        """The report as one JSON document: counts, then every execution's outcome."""
        return {
            "workflow": self.workflow,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "dry_run": self.dry_run,
            "migrated": len(self.migrated),
            "refused": len(self.refused),
            "diverging": len(self.diverging) if self.dry_run else None,
            "executions": [o.to_json() for o in self.outcomes],
        }

    def lines(self) -> list[str]:
        """The report for people: a summary line, then one line per execution (and, in a dry
        run, one more per divergence)."""
        span = f"{self.workflow} v{self.from_version} -> v{self.to_version}"
        n = len(self.outcomes)
        if self.dry_run:
            head = (
                f"dry run of {span}, nothing written: {n} execution(s), "
                f"{len(self.migrated)} would be migrated, {len(self.refused)} refused, "
                f"{len(self.diverging)} diverge when replayed under v{self.to_version}"
            )
        else:
            head = f"{span}: {len(self.migrated)} migrated, {len(self.refused)} refused"
        out = [head]
        for o in self.outcomes:
            where = f"{o.execution_id} (tenant {o.tenant})"
            if o.migrated:
                verb = "would migrate" if self.dry_run else "migrated"
                at = f" at seq {o.seq}" if o.seq is not None else ""
                out.append(f"{verb} {where} in {o.state}{at}")
            else:
                assert o.refusal is not None
                out.append(f"refused {where}: {o.refusal.value}: {o.detail}")
            if o.divergence is not None:
                d = o.divergence
                event = f" ({d.event})" if d.event else ""
                out.append(f"    diverges at seq {d.seq}{event}: {d.kind.value}: {d.detail}")
        return out


def migrate(
    engine: Engine,
    workflow: str,
    from_version: int,
    to_version: int,
    *,
    executions: Sequence[str] | Literal["all"],
    tenant: str | None = None,
    requested_by: str | None = None,
    dry_run: bool = False,
    progress: Callable[[Sequence[Target]], Iterable[Target]] | None = None,
) -> MigrationReport:
    """Move executions of ``workflow`` from ``from_version`` to the newer ``to_version``;
    :meth:`ledgerflow.engine.Engine.migrate` documents the contract and checks the tenant and
    requester before calling this."""
    _require_version(from_version, "from_version")
    _require_version(to_version, "to_version")
    if to_version <= from_version:
        raise InvalidInputError(
            f"cannot migrate {workflow} from v{from_version} to v{to_version}: executions only "
            "move to a newer version"
        )
    old = engine.definition(workflow, from_version)
    new = engine.definition(workflow, to_version)
    targets = _targets(engine.store, workflow, from_version, executions, tenant)
    outcomes: list[MigrationOutcome] = []
    for execution_id, owner in progress(targets) if progress is not None else targets:
        if dry_run:
            outcomes.append(_dry_run_one(engine, execution_id, owner, old, new))
        else:
            outcomes.append(_migrate_one(engine, execution_id, owner, old, new, requested_by))
    return MigrationReport(
        workflow=workflow,
        from_version=from_version,
        to_version=to_version,
        dry_run=dry_run,
        outcomes=tuple(outcomes),
    )


def _require_version(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{what} must be a positive whole number, not {value!r}")


def _targets(
    store: SQLStore,
    workflow: str,
    version: int,
    executions: Sequence[str] | Literal["all"],
    tenant: str | None,
) -> list[Target]:
    """The executions chosen: every active or failed one on ``version`` (of ``tenant``, or of
    every tenant), or those named, which need their tenant."""
    if executions == "all":
        with store.read(tenant=tenant or ALL_TENANTS) as conn:
            return store.executions_on(
                conn, workflow, version, statuses=("active", "failed"), tenant=tenant
            )
    if isinstance(executions, str) or not isinstance(executions, Sequence):
        raise InvalidInputError("executions must be 'all' or a list of execution ids")
    if not executions:
        raise InvalidInputError("no execution named: name at least one, or choose all")
    if tenant is None:
        raise InvalidInputError("executions named by id need their tenant")
    for execution_id in executions:
        if not isinstance(execution_id, str) or not execution_id or len(execution_id) > 64:
            raise InvalidInputError(f"{execution_id!r} is not an execution id")
    return [(execution_id, tenant) for execution_id in dict.fromkeys(executions)]


def _refusal(
    row: Any, execution_id: str, old: Definition, new: Definition, last_seq: int
) -> tuple[MigrationRefusal, str] | None:
    """Why the execution in ``row`` (``None``: not found) cannot move from ``old`` to
    ``new``, if it cannot; ``last_seq`` is the last seq of its ledger."""
    if row is None:
        return MigrationRefusal.NOT_FOUND, f"execution {execution_id} not found"
    if (row.workflow, row.version) != (old.name, old.version):
        return (
            MigrationRefusal.NOT_ON_VERSION,
            f"execution {execution_id} is on {row.workflow} v{row.version}, not "
            f"{old.name} v{old.version}",
        )
    if row.status == Status.COMPLETED.value:
        return (
            MigrationRefusal.COMPLETED,
            f"execution {execution_id} is completed in {row.state!r}: nothing is left to run",
        )
    if row.status == Status.FAILED.value:
        return (
            MigrationRefusal.FAILED,
            f"execution {execution_id} is failed in {row.state!r}: retry it first (a retry "
            f"runs the failed transition of v{old.version} again)",
        )
    if last_seq > row.projection_seq:
        return (
            MigrationRefusal.EVENTS_PENDING,
            f"execution {execution_id} has {last_seq - row.projection_seq} event(s) still to "
            "be processed: migrate it once workers have processed them",
        )
    if row.state not in new.workflow.states:
        return (
            MigrationRefusal.STATE_MISSING,
            f"state {row.state!r} does not exist in {new.name} v{new.version}",
        )
    if new.is_terminal(row.state):
        return (
            MigrationRefusal.STATE_TERMINAL,
            f"state {row.state!r} is terminal in {new.name} v{new.version}: the execution "
            "would end without a transition",
        )
    return None


def _refused(
    execution_id: str, tenant: str, row: Any, refusal: tuple[MigrationRefusal, str]
) -> MigrationOutcome:
    return MigrationOutcome(
        execution_id=execution_id,
        tenant=tenant,
        migrated=False,
        state=None if row is None else row.state,
        status=None if row is None else row.status,
        refusal=refusal[0],
        detail=refusal[1],
    )


def _projection(row: Any) -> State:
    return State(
        workflow=row.workflow,
        version=row.version,
        name=row.state,
        context=row.context,
        status=Status(row.status),
        seq=row.projection_seq,
        decided_seq=row.decided_seq,
    )


def _migrate_one(
    engine: Engine,
    execution_id: str,
    tenant: str,
    old: Definition,
    new: Definition,
    requested_by: str | None,
) -> MigrationOutcome:
    """Migrate one execution under its lease. A refusal seen before taking the lease writes
    nothing at all."""
    store = engine.store
    with store.read(tenant=tenant) as conn:
        row = store.execution_row(conn, execution_id, tenant)
        last = 0 if row is None else store.last_seq(conn, execution_id)
    refusal = _refusal(row, execution_id, old, new, last)
    if refusal is not None:
        return _refused(execution_id, tenant, row, refusal)
    owner = f"ledgerflow.migrate:{uuid.uuid4().hex}"
    token = store.take_lease(execution_id, owner, _LEASE_TTL)
    if token is None:
        busy = f"execution {execution_id} is being processed by a worker: try again"
        return _refused(execution_id, tenant, row, (MigrationRefusal.BUSY, busy))
    try:
        outcome = _commit(store, execution_id, tenant, owner, token, old, new, requested_by)
    finally:
        store.release_lease(execution_id, owner, token)
    if outcome.seq is not None:
        _wake(engine, execution_id, tenant, outcome.seq)
        log.info(
            "execution %s (tenant %s) migrated from %s v%d to v%d at seq %d",
            execution_id,
            tenant,
            new.name,
            old.version,
            new.version,
            outcome.seq,
        )
    return outcome


def _commit(
    store: SQLStore,
    execution_id: str,
    tenant: str,
    owner: str,
    token: int,
    old: Definition,
    new: Definition,
    requested_by: str | None,
) -> MigrationOutcome:
    """Holding the lease, in one transaction that checks it: look again (the execution may
    have moved on since it was first read), then append the migration record, save the
    projection pinned to the new version and a snapshot, and re-arm the state's timers."""
    for attempt in range(_COMMIT_ATTEMPTS):
        try:
            with store.write(tenant=tenant) as conn:
                store.fence(conn, execution_id, owner, token, _LEASE_TTL)
                store.lock_execution(conn, execution_id)
                row = store.execution_row(conn, execution_id, tenant)
                last = 0 if row is None else store.last_seq(conn, execution_id)
                refusal = _refusal(row, execution_id, old, new, last)
                if refusal is not None:
                    return _refused(execution_id, tenant, row, refusal)
                record = ExecutionMigrated(
                    seq=last + 1,
                    from_version=old.version,
                    to_version=new.version,
                    state=row.state,
                    requested_by=requested_by,
                )
                after = machine.apply(new, _projection(row), record)
                store.insert_records(conn, execution_id, tenant, [record])
                store.save_projection(conn, execution_id, after)
                store.pin_version(conn, execution_id, new.version)
                if store.snapshot_every > 0:
                    store.save_snapshot(conn, execution_id, tenant, after)
                _rearm_timers(store, conn, execution_id, tenant, old, new, row)
        except sa.exc.IntegrityError:
            # an append took the seq between the read and the insert: look again
            if attempt + 1 == _COMMIT_ATTEMPTS:
                raise
            continue
        return MigrationOutcome(
            execution_id=execution_id,
            tenant=tenant,
            migrated=True,
            state=after.name,
            status=after.status.value,
            seq=record.seq,
        )
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def _timing(definition: Definition, state: str) -> tuple[list[Any], list[Any]]:
    """How ``definition`` times ``state``: its ``after`` and its ``at`` timers."""
    return (
        sorted(definition.timers(state)),
        sorted((event, deadline.source) for event, deadline in definition.deadlines(state)),
    )


def _rearm_timers(
    store: SQLStore,
    conn: sa.Connection,
    execution_id: str,
    tenant: str,
    old: Definition,
    new: Definition,
    row: Any,
) -> None:
    """Inside the migration's transaction: when the two versions time the current state
    differently, cancel the old version's timers of the state and arm the new version's as if
    it had been pinned since the state was entered: each ``after`` due that long after the
    entry (at once if that is past), each ``at`` at the time its expression gives over the
    context; a timer of an event that fired already during this stay is not armed again.
    Timers that steps scheduled belong to the execution, not the state: they stay."""
    state = row.state
    if _timing(old, state) == _timing(new, state):
        return
    stored = store.records(conn, execution_id, tenant)
    entry = next(
        (
            s
            for s in reversed(stored)
            if isinstance(s.record, TransitionApplied | TransitionReverted)
        ),
        stored[0],
    )
    fired = {
        t.event
        for t in store.timer_rows(conn, execution_id, tenant)
        if t.kind == "state" and t.armed_seq == entry.record.seq and t.state == "fired"
    }
    store.cancel_timers(conn, execution_id)
    now = store.clock()
    timed = [
        (event, max(0.0, entry.created_at + seconds - now))
        for event, seconds in new.timers(state)
        if event not in fired
    ]
    due: list[tuple[str, float]] = []
    for event, deadline in new.deadlines(state):
        if event in fired:
            continue
        try:
            moment = deadline.moment({"context": dict(row.context), "state": state})
        except ExpressionError as exc:
            log.warning("execution %s: the timer for %s is not armed: %s", execution_id, event, exc)
            continue
        if moment is not None:
            due.append((event, moment))
    store.arm_timers(conn, execution_id, tenant, entry.record.seq, timed, at=due)


def _wake(engine: Engine, execution_id: str, tenant: str, seq: int) -> None:
    """After the lease is given up: publish the wake-ups of events appended while the migration
    held it. A worker handed one then may have found the lease held and let it go; the outbox
    relay would send it again, but only later."""
    store = engine.store
    with store.read(tenant=tenant) as conn:
        waiting = store.records(conn, execution_id, tenant, after=seq)
    wakeups = [
        Wakeup(execution_id=execution_id, tenant=tenant, event_id=s.event_id)
        for s in waiting
        if s.status == "pending"
    ]
    if not wakeups:
        return
    try:
        engine.transport.publish(wakeups)
    except Exception as exc:  # the events are committed: the outbox relay sends them later
        log.warning("wake-ups of %s not published (the outbox relay will): %s", execution_id, exc)


def _dry_run_one(
    engine: Engine, execution_id: str, tenant: str, old: Definition, new: Definition
) -> MigrationOutcome:
    """What migrating one execution would do, and where its ledger diverges under ``new``;
    reads only."""
    store = engine.store
    with store.read(tenant=tenant) as conn:
        row = store.execution_row(conn, execution_id, tenant)
        stored = [] if row is None else store.records(conn, execution_id, tenant)
    last = stored[-1].record.seq if stored else 0
    refusal = _refusal(row, execution_id, old, new, last)
    divergence = None
    if row is not None and (row.workflow, row.version) == (old.name, old.version):
        try:
            divergence = replay_divergence(
                [s.record for s in stored],
                old,
                new,
                versions=lambda v: engine.definition(old.name, v),
            )
        except LedgerflowError as exc:
            divergence = Divergence(
                seq=last, event=None, kind=DivergenceKind.UNREPLAYABLE, detail=str(exc)
            )
    if refusal is not None:
        return attrs.evolve(_refused(execution_id, tenant, row, refusal), divergence=divergence)
    return MigrationOutcome(
        execution_id=execution_id,
        tenant=tenant,
        migrated=True,
        state=row.state,
        status=row.status,
        divergence=divergence,
    )
