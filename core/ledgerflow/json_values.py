"""What JSON values may hold on their way through ledgerflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["holds_nul"]


def holds_nul(value: Any) -> bool:
    """Whether any string in ``value`` (keys included, at any depth) holds the NUL character,
    which PostgreSQL cannot store and the CEL runtime would cut strings at."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, Mapping):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return False
