"""``diff_workflows``: what changed between two versions, for people and as JSON."""

from __future__ import annotations

import json

import attrs

import ledgerflow
from ledgerflow.versioning import FieldChange, ItemChange, diff_workflows
from versioning.parcel_workflows import V1_TO_V2, parcel


def test_the_text_names_every_change_between_two_versions() -> None:
    assert "\n".join(diff_workflows(parcel(1), parcel(2)).lines()) == V1_TO_V2


def test_the_json_holds_the_same_changes() -> None:
    found = diff_workflows(parcel(1), parcel(2)).to_json()
    assert json.loads(json.dumps(found)) == found  # plain JSON
    assert (found["workflow"], found["old_version"], found["new_version"]) == ("Parcel", 1, 2)
    assert found["unchanged"] is False
    assert found["changes"] == []
    assert [(s["change"], s["name"]) for s in found["states"]] == [
        ("removed", "held"),
        ("added", "returned"),
    ]
    ship = next(t for t in found["transitions"] if t["name"] == "ship")
    assert ship["fields"] == [
        {
            "path": "condition",
            "change": "changed",
            "before": "context.weight <= 30",
            "after": "context.weight <= 20",
        },
        {"path": "roles", "change": "changed", "before": ["clerk"], "after": ["clerk", "courier"]},
    ]
    pack = next(t for t in found["transitions"] if t["name"] == "pack")
    assert [(s["change"], s["name"], s["summary"]) for s in pack["steps"]] == [
        ("changed", "note", "ledgerflow.record"),
        ("added", "label", "ledgerflow.set_context"),
    ]
    assert pack["steps"][0]["fields"] == [{"path": "params.by", "change": "added", "after": "v2"}]
    event = next(e for e in found["events"] if e["name"] == "Pack")
    assert event["fields"] == [
        {"path": "payload.properties.weight.maximum", "change": "added", "after": 50}
    ]


def test_timers_conditions_and_removed_fields_are_shown_with_both_sides() -> None:
    v2 = parcel(2).workflow
    changed = attrs.evolve(
        v2,
        version=5,
        description="",
        initial_state="received",
        transitions=tuple(
            attrs.evolve(t, after="3h")
            if t.name == "expire"
            else attrs.evolve(t, condition=None)
            if t.name == "ship"
            else t
            for t in v2.transitions
        ),
    )
    found = diff_workflows(v2, changed)
    assert found.workflow == (
        FieldChange(
            path="description",
            change="changed",
            before="Pack, ship and deliver a parcel.",
            after="",
        ),
    )
    by_name = {t.name: t for t in found.transitions}
    assert by_name["expire"].fields == (
        FieldChange(path="after", change="changed", before="2h", after="3h"),
    )
    assert by_name["ship"].fields == (
        FieldChange(path="condition", change="removed", before="context.weight <= 20"),
    )
    assert '      condition: removed (was "context.weight <= 20")' in found.lines()


def test_a_state_made_terminal_is_a_changed_state() -> None:
    found = diff_workflows(parcel(2), parcel(3))
    assert found.states == (
        ItemChange(
            name="shipped",
            change="changed",
            summary="now terminal",
            fields=(FieldChange(path="terminal", change="changed", before=False, after=True),),
        ),
        ItemChange(name="returned", change="removed"),
        ItemChange(name="delivered", change="removed"),
    )
    assert "  ~ shipped (now terminal)" in found.lines()


def test_the_same_definition_under_another_version_has_no_changes() -> None:
    v1 = parcel(1)
    found = diff_workflows(v1, attrs.evolve(v1.workflow, version=7))
    assert found.unchanged
    assert found.lines() == ["Parcel v1 -> v7: no changes besides the version number"]
    assert found.to_json()["unchanged"] is True


def test_unnamed_transitions_are_matched_by_event_and_source_not_position() -> None:
    first = ledgerflow.Workflow(
        name="Door",
        version=1,
        initial_state="shut",
        states=("shut", "open", "gone"),
        terminal_states=("gone",),
        transitions=(
            ledgerflow.Transition(source="shut", target="open", on="Open"),
            ledgerflow.Transition(source="open", target="shut", on="Shut"),
            ledgerflow.Transition(source="*", target="gone", on="Remove"),
        ),
    )
    reordered = attrs.evolve(first, version=2, transitions=tuple(reversed(first.transitions)))
    assert diff_workflows(first, reordered).unchanged
    retargeted = attrs.evolve(
        first,
        version=3,
        transitions=(
            first.transitions[0],
            attrs.evolve(first.transitions[1], target="gone"),
            first.transitions[2],
        ),
    )
    (change,) = diff_workflows(first, retargeted).transitions
    assert (change.name, change.summary) == ("Shut from open", "Shut: open -> gone")
    assert change.fields == (FieldChange(path="to", change="changed", before="shut", after="gone"),)


def test_long_values_are_cut_for_people_but_whole_in_json() -> None:
    v1 = parcel(1).workflow
    schema = {"type": "object", "description": "x" * 300}
    v2 = attrs.evolve(
        v1,
        version=2,
        events={**v1.events, "Inspect": ledgerflow.EventSpec(payload=schema)},
    )
    found = diff_workflows(v1, v2)
    (event,) = found.events
    line = next(line for line in found.lines() if "payload.description" in line)
    assert line.startswith('      payload.description: added "xxx')
    assert line.endswith("xxx...")
    assert len(line) < 200
    assert any(f.get("after") == "x" * 300 for f in event.to_json()["fields"])
