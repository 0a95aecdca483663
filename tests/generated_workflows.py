"""Hypothesis strategies for valid workflow definitions and the events they know.

Definitions are valid by construction: a chain of states from the initial one to a terminal
one makes every state reachable and gives every non-terminal state a way out; extra transitions
each carry a distinct condition, so none is ambiguous.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ledgerflow import Event, EventSpec, OnError, Step, Transition, Workflow

EVENTS = ("Go", "Bump", "Stop", "Note")
ROLES = ("clerk", "manager", "admin")

PAYLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "tag": {"type": "string"}},
}


@st.composite
def steps(draw: st.DrawFn, prefix: str) -> tuple[Step, ...]:
    count = draw(st.integers(0, 4))
    result: list[Step] = []
    for i in range(count):
        earlier = [s.id for s in result]
        result.append(
            Step(
                id=f"{prefix}_s{i}",
                action=draw(st.sampled_from(["ledgerflow.record", "ledgerflow.notify"])),
                params={"n": {"expr": "payload.n"}, "fixed": draw(st.integers(-5, 5))},
                depends_on=tuple(draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)))
                if earlier
                else (),
                on_error=draw(
                    st.sampled_from(
                        [
                            OnError(),
                            OnError(strategy="continue"),
                            OnError(strategy="retry", attempts=3),
                        ]
                    )
                ),
            )
        )
    return tuple(reversed(result)) if draw(st.booleans()) else tuple(result)


ASSIGNMENTS: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
    [
        {},
        {"last": {"expr": "payload.n"}},
        {"count": {"expr": "has(context.count) ? context.count + 1 : 1"}},
        {"seen": {"expr": "event + ':' + state"}, "literal": [1, "two", {"three": 3}]},
        {"total": {"expr": "(has(context.total) ? context.total : 0) + payload.n"}},
    ]
)


@st.composite
def workflows(draw: st.DrawFn) -> Workflow:
    """A valid workflow of 2 to 6 states over the events in :data:`EVENTS`."""
    size = draw(st.integers(2, 6))
    states = [f"s{i}" for i in range(size)]
    terminal = {states[-1]} | set(draw(st.lists(st.sampled_from(states[1:]), max_size=2)))
    transitions: list[Transition] = []
    # the chain: each state's first non-terminal predecessor leads to it
    for i in range(1, size):
        source = states[i - 1]
        while source in terminal:
            source = states[states.index(source) - 1]
        transitions.append(
            Transition(
                name=f"chain{i}",
                source=(source,),
                target=states[i],
                on=draw(st.sampled_from(EVENTS)),
                condition=f"!has(payload.n) || payload.n != {1000 + i}",
                roles=tuple(draw(st.lists(st.sampled_from(ROLES), unique=True, max_size=2))),
                set=draw(ASSIGNMENTS),
                steps=draw(steps(f"chain{i}")),
            )
        )
    non_terminal = [s for s in states if s not in terminal]
    for j in range(draw(st.integers(0, 5))):
        transitions.append(
            Transition(
                name=f"extra{j}",
                source=("*",)
                if draw(st.booleans())
                else tuple(draw(st.lists(st.sampled_from(non_terminal), min_size=1, unique=True))),
                target=draw(st.sampled_from(states)),
                on=draw(st.sampled_from(EVENTS)),
                condition=f"has(payload.n) && payload.n % {j + 2} == 0",
                roles=tuple(draw(st.lists(st.sampled_from(ROLES), unique=True, max_size=2))),
                set=draw(ASSIGNMENTS),
                steps=draw(steps(f"extra{j}")),
            )
        )
    used = {t.on for t in transitions}
    return Workflow(
        name=draw(st.sampled_from(["Alpha", "Beta", "Gamma"])),
        version=draw(st.integers(1, 5)),
        initial_state=states[0],
        states=tuple(states),
        terminal_states=tuple(s for s in states if s in terminal),
        events={
            name: EventSpec(payload=PAYLOAD_SCHEMA) for name in sorted(used) if draw(st.booleans())
        },
        transitions=tuple(transitions),
    )


def events() -> st.SearchStrategy[Event]:
    """Events, known and unknown, with payloads that sometimes break the schema."""
    payloads = st.one_of(
        st.fixed_dictionaries({}, optional={"n": st.integers(-3, 12), "tag": st.text(max_size=3)}),
        st.just({"n": "not a number"}),
    )
    return st.builds(
        Event,
        name=st.sampled_from([*EVENTS, "Unknown"]),
        payload=payloads,
        role=st.one_of(st.none(), st.sampled_from(ROLES)),
    )
