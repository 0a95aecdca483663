"""How ledger records and states are written to and read from the database.

A record is stored as its stable ``kind`` tag plus a JSON body of its fields (without ``seq``,
which is a column). Decoding never depends on a class's module or name, so moving code never
breaks stored history.
"""

from __future__ import annotations

import functools
from typing import Any

import cattrs

from ledgerflow.errors import LedgerError
from ledgerflow.model import RECORD_TYPES, Record, State

__all__ = ["decode_record", "decode_state", "encode_record", "encode_state"]

_BY_KIND: dict[str, type[Record]] = {cls.kind: cls for cls in RECORD_TYPES}


@functools.cache
def _converter() -> cattrs.Converter:
    return cattrs.Converter(forbid_extra_keys=True)


def encode_record(record: Record) -> tuple[str, dict[str, Any]]:
    """The ``(kind, body)`` stored for ``record``."""
    body: dict[str, Any] = _converter().unstructure(record)
    body.pop("seq")
    return record.kind, body


def decode_record(kind: str, seq: int, body: dict[str, Any]) -> Record:
    """The record stored as ``kind`` and ``body`` at ``seq``."""
    try:
        cls = _BY_KIND[kind]
    except KeyError:
        raise LedgerError(f"seq {seq}: unknown record kind {kind!r}") from None
    record: Record = _converter().structure({**body, "seq": seq}, cls)
    return record


def encode_state(state: State) -> dict[str, Any]:
    """The JSON form of a state, as snapshots store it."""
    body: dict[str, Any] = _converter().unstructure(state)
    return body


def decode_state(body: dict[str, Any]) -> State:
    """The state stored as ``body``."""
    return _converter().structure(body, State)
