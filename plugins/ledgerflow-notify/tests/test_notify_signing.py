"""The webhook signature: what it accepts and what it refuses, for any body and secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow_notify import signature_header, verify_signature

NOW = 1_700_000_000

bodies = st.binary(max_size=2048)
secrets = st.text(min_size=1, max_size=64)


@given(body=bodies, secret=secrets)
def test_a_signed_body_verifies(body: bytes, secret: str) -> None:
    assert verify_signature(body, signature_header(body, secret, timestamp=NOW), secret, now=NOW)


@given(body=st.binary(min_size=1, max_size=2048), secret=secrets, data=st.data())
def test_changing_any_one_byte_of_the_body_fails_verification(
    body: bytes, secret: str, data: st.DataObject
) -> None:
    header = signature_header(body, secret, timestamp=NOW)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]), label="byte")
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    assert not verify_signature(changed, header, secret, now=NOW)


@given(body=bodies, secret=secrets, data=st.data())
def test_changing_any_one_character_of_the_signature_fails_verification(
    body: bytes, secret: str, data: st.DataObject
) -> None:
    header = signature_header(body, secret, timestamp=NOW)
    digest_at = header.index("v1=") + 3
    index = data.draw(st.integers(min_value=digest_at, max_value=len(header) - 1))
    char = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != header[index]))
    changed = header[:index] + char + header[index + 1 :]
    assert not verify_signature(body, changed, secret, now=NOW)


@given(body=bodies, secret=secrets, skew=st.integers(min_value=-10_000, max_value=10_000))
def test_a_signature_is_accepted_within_the_tolerance_and_refused_beyond_it(
    body: bytes, secret: str, skew: int
) -> None:
    header = signature_header(body, secret, timestamp=NOW)
    assert verify_signature(body, header, secret, now=NOW + skew) == (abs(skew) <= 300)


def test_a_rotated_secret_is_accepted_while_both_signatures_are_sent() -> None:
    body = b'{"message":"hello"}'
    old = signature_header(body, "old", timestamp=NOW)
    new = signature_header(body, "new", timestamp=NOW)
    both = f"{old},{new.split(',')[1]}"
    assert verify_signature(body, both, "old", now=NOW)
    assert verify_signature(body, both, "new", now=NOW)
    assert not verify_signature(body, both, "other", now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "v1=abc",
        "t=1700000000",
        "t=soon,v1=abc",
        "t=1700000000,t=1700000000,v1=abc",
        "t=-1700000000,v1=abc",
        "t=\uff11\uff17\uff10\uff10,v1=abc",  # digits, but not ASCII ones
    ],
)
def test_a_malformed_header_is_refused_without_raising(header: str) -> None:
    assert not verify_signature(b"body", header, "secret", now=NOW)
