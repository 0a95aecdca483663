"""The webhook signature: ``X-Ledgerflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The HMAC is computed with the shared secret over the timestamp, a dot and the exact body
bytes (``f"{t}.{body}"``), so a receiver can check that the body came from a holder of the
secret, unchanged, and recently (the timestamp is signed too, which bounds replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "signature_header", "verify_signature"]

SIGNATURE_HEADER = "X-Ledgerflow-Signature"
"""The name of the header that carries the signature."""


def _digest(body: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signature_header(body: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The value of ``X-Ledgerflow-Signature`` for ``body`` signed with ``secret`` at
    ``timestamp`` (Unix seconds; default: now): ``t=<timestamp>,v1=<hex digest>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(body, secret, t)}"


def verify_signature(
    body: bytes,
    header: str,
    secret: str,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (the value of ``X-Ledgerflow-Signature``) is a valid signature of
    ``body`` (the raw request body, before any JSON decoding) with ``secret``, made at most
    ``tolerance`` seconds from ``now`` (default: the current time) either way.

    Never raises: a malformed or missing part, a stale timestamp or a wrong digest all give
    ``False``. Several ``v1=`` parts are accepted (any one matching will do), so a sender can
    sign with an old and a new secret while the secret is rotated. Digests are compared in
    constant time.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _digest(body, secret, timestamp)
    matched = False
    for candidate in candidates:
        # compare every candidate, so the time taken does not tell which one matched
        if hmac.compare_digest(expected.encode("ascii"), candidate.encode("utf-8")):
            matched = True
    return matched
