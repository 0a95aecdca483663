"""The wire format: a wake-up goes out as flat string fields with a version and comes back the
same; whatever else an entry holds gives a problem, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ledgerflow.transports import Wakeup

from ledgerflow_redis.messages import VERSION, WakeupMessage, decode, decode_fields, encode

# what a database can store: any Unicode text but NUL (a wake-up holding one is refused, see
# below); the engine refuses ids that are not Unicode (a lone surrogate) before they are stored
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)
wakeups = st.builds(Wakeup, execution_id=names, tenant=names, event_id=names)


def test_a_wakeup_is_four_flat_string_fields_with_version_1() -> None:
    fields = encode(Wakeup(execution_id="inv-1", tenant="acme", event_id="ev-9"))
    assert fields == {"v": "1", "execution_id": "inv-1", "tenant": "acme", "event_id": "ev-9"}
    assert VERSION == 1


@settings(deadline=None)
@given(wakeups)
def test_a_wakeup_comes_back_as_it_went_out(wakeup: Wakeup) -> None:
    raw = {k.encode(): v.encode() for k, v in encode(wakeup).items()}  # as Redis gives it back
    fields, problem = decode_fields(raw)
    assert problem is None
    assert decode(fields) == wakeup


@settings(deadline=None)
@given(wakeups, st.sampled_from(["execution_id", "tenant", "event_id"]))
def test_a_field_holding_nul_is_a_problem_never_a_wakeup(wakeup: Wakeup, field: str) -> None:
    fields = {**encode(wakeup), field: "a\x00b"}
    problem = decode(fields)
    assert isinstance(problem, str)
    assert "NUL" in problem


@settings(deadline=None)
@given(st.dictionaries(st.binary(max_size=12), st.binary(max_size=12), max_size=6))
def test_any_entry_gives_a_wakeup_or_a_problem_and_never_raises(
    raw: dict[bytes, bytes],
) -> None:
    fields, _ = decode_fields(raw)
    result = decode(fields)
    assert isinstance(result, Wakeup | str)
    assert len(fields) == len(raw)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "execution_id", "tenant", "event_id", "x"]), names))
def test_any_mix_of_the_known_fields_gives_a_wakeup_only_when_it_is_exactly_version_1(
    fields: dict[str, str],
) -> None:
    result = decode(fields)
    exact = set(fields) == {"v", "execution_id", "tenant", "event_id"} and fields["v"] == "1"
    assert isinstance(result, Wakeup) == exact


def test_each_kind_of_problem_is_said_plainly() -> None:
    complete = {"v": "1", "execution_id": "inv-1", "tenant": "acme", "event_id": "ev-9"}
    assert decode({}) == "an empty entry (no fields)"
    assert decode({"execution_id": "inv-1"}) == "no version field 'v': not a ledgerflow wake-up"
    assert decode({**complete, "v": "7"}) == (
        "unknown version v='7' (this worker reads version 1; was it published by a newer "
        "ledgerflow-redis?)"
    )
    assert decode({k: v for k, v in complete.items() if k != "tenant"}) == (
        "a version 1 wake-up that does not parse: required field missing @ $.tenant"
    )
    assert decode({**complete, "colour": "red"}) == (
        "a version 1 wake-up that does not parse: extra fields found (colour) @ $"
    )
    assert decode({**complete, "event_id": ""}) == (
        "a version 1 wake-up that does not parse: event_id must be a non-empty string @ $"
    )


def test_bytes_that_are_not_utf8_are_named_and_kept_escaped_for_the_dead_letters() -> None:
    fields, problem = decode_fields({b"v": b"1", b"tenant": b"ac\xffme"})
    assert problem == "not UTF-8: field 'tenant'"
    assert fields == {"v": "1", "tenant": "ac\\xffme"}


def test_the_wire_model_is_separate_from_the_wakeup() -> None:
    wakeup = Wakeup(execution_id="inv-1", tenant="acme", event_id="ev-9")
    message = WakeupMessage.from_wakeup(wakeup)
    assert message.v == VERSION
    assert message.to_wakeup() == wakeup
