"""What JSON values may hold on their way through ledgerflow."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["holds_nul", "unstorable"]


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


def unstorable(value: Any) -> tuple[str, str] | None:
    """Why ``value`` cannot be stored as JSON on every database ledgerflow runs on, as
    ``(kind, detail)``, or ``None`` when it can. ``kind`` is ``not_json`` (a type JSON
    lacks, NaN or infinity; ``detail`` is the encoder's message), ``too_deep``, ``nul`` (a
    string holds the NUL character) or ``not_unicode`` (``detail`` shows the character no
    UTF-8 holds, a lone surrogate)."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return "not_json", str(exc)
    except RecursionError:
        return "too_deep", ""
    if "\\u0000" in text and holds_nul(value):
        return "nul", ""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return "not_unicode", repr(exc.object[exc.start])
    return None
