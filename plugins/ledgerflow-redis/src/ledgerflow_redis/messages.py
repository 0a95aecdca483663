"""The wire format of a wake-up in a stream entry: flat string fields with a version.

Version 1 is ``{"v": "1", "execution_id": …, "tenant": …, "event_id": …}``. The model
(:class:`~ledgerflow.transports.Wakeup`) and the wire format (:class:`WakeupMessage`) are kept
apart, so either can change without the other; a new wire format gets a new ``v``, and a worker
that does not know it dead-letters the message with a reason instead of guessing.

:func:`decode` never raises: whatever an entry holds (missing fields, extra fields, an unknown
version, bytes that are not UTF-8), it gives a wake-up or a problem.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.v import format_exception
from ledgerflow.transports import Wakeup

__all__ = ["VERSION", "WakeupMessage", "decode", "decode_fields", "encode"]

VERSION = 1
"""The version of the wire format this transport writes and reads."""


def _non_empty(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")
    if "\x00" in value:  # no database stores it: the message could never be handled
        raise ValueError(f"{attribute.name} holds a NUL character")


def _current_version(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value != VERSION:
        raise ValueError(f"version {value} is not {VERSION}")


@attrs.frozen(kw_only=True)
class WakeupMessage:
    """Version 1 of a wake-up on the wire."""

    v: int = attrs.field(default=VERSION, validator=_current_version)
    execution_id: str = attrs.field(validator=_non_empty)
    tenant: str = attrs.field(validator=_non_empty)
    event_id: str = attrs.field(validator=_non_empty)

    @classmethod
    def from_wakeup(cls, wakeup: Wakeup) -> WakeupMessage:
        """The message carrying ``wakeup``."""
        return cls(execution_id=wakeup.execution_id, tenant=wakeup.tenant, event_id=wakeup.event_id)

    def to_wakeup(self) -> Wakeup:
        """The wake-up this message carries."""
        return Wakeup(execution_id=self.execution_id, tenant=self.tenant, event_id=self.event_id)


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _structure_int(value: object, _: type) -> int:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise ValueError(f"expected a whole number, not {value!r}")
    return int(value)


@functools.cache
def _converter() -> cattrs.Converter:
    """The one converter of the wire format: every value a string, no field unknown to the
    version."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_unstructure_hook(int, str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(str, _structure_str)
    return converter


def encode(wakeup: Wakeup) -> dict[str, str]:
    """The stream entry's fields for ``wakeup``."""
    fields: dict[str, str] = _converter().unstructure(WakeupMessage.from_wakeup(wakeup))
    return fields


def decode_fields(raw: Mapping[bytes, bytes]) -> tuple[dict[str, str], str | None]:
    """An entry's fields as text, and a problem if some are not UTF-8 (those are kept with
    the offending bytes escaped, as ``\\xff``, for the dead letters)."""
    fields: dict[str, str] = {}
    bad: list[str] = []
    for key, value in raw.items():
        try:
            name = key.decode()
        except UnicodeDecodeError:
            name = key.decode(errors="backslashreplace")
            bad.append(f"the name of field {name}")
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = value.decode(errors="backslashreplace")
            bad.append(f"field {name!r}")
        fields[name] = text
    problem = f"not UTF-8: {', '.join(bad)}" if bad else None
    return fields, problem


def decode(fields: Mapping[str, str]) -> Wakeup | str:
    """The wake-up in an entry's ``fields``, or what is wrong with them."""
    if not fields:
        return "an empty entry (no fields)"
    version = fields.get("v")
    if version is None:
        return "no version field 'v': not a ledgerflow wake-up"
    if version != str(VERSION):
        return (
            f"unknown version v={version!r} (this worker reads version {VERSION}; "
            "was it published by a newer ledgerflow-redis?)"
        )
    try:
        message = _converter().structure(dict(fields), WakeupMessage)
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, format_exception=_describe)
        return f"a version {VERSION} wake-up that does not parse: " + "; ".join(problems)
    except (ValueError, TypeError) as exc:  # a validator's, outside cattrs' grouping
        return f"a version {VERSION} wake-up that does not parse: {exc}"
    return message.to_wakeup()


def _describe(exc: BaseException, type_: Any) -> str:
    """A validator's own message; cattrs' wording for the rest (a missing or extra field)."""
    if type(exc) in (ValueError, TypeError) and str(exc):
        return str(exc)
    return format_exception(exc, type_)
