"""Drawing a workflow: a Mermaid state diagram any Markdown renderer with Mermaid shows."""

from __future__ import annotations

from ledgerflow.definitions import Definition
from ledgerflow.model import ANY_STATE, Transition

__all__ = ["mermaid"]


def mermaid(definition: Definition) -> str:
    """A Mermaid ``stateDiagram-v2`` of ``definition``: every state, every transition labelled
    with its event (and condition, roles and timer where present), the initial state entered
    from ``[*]`` and every terminal state leading to ``[*]``."""
    workflow = definition.workflow
    lines = ["---", f"title: {workflow.name} v{workflow.version}", "---", "stateDiagram-v2"]
    lines.append(f"    [*] --> {workflow.initial_state}")
    for transition in workflow.transitions:
        label = _label(transition)
        sources = (
            [s for s in workflow.states if s not in workflow.terminal_states]
            if ANY_STATE in transition.source
            else list(transition.source)
        )
        for source in sources:
            lines.append(f"    {source} --> {transition.target} : {label}")
    for state in workflow.terminal_states:
        lines.append(f"    {state} --> [*]")
    return "\n".join(lines) + "\n"


def _label(transition: Transition) -> str:
    parts = [transition.on]
    if transition.after is not None:
        parts.append(f"after {transition.after}")
    if transition.condition is not None:
        parts.append(f"[{transition.condition}]")
    if transition.roles:
        parts.append(f"({', '.join(transition.roles)})")
    # a line break ends a Mermaid label and ';' ends a statement: write them as entities
    return " ".join(parts).replace("\n", " ").replace(";", "#59;")
