"""VAT on a net amount: a rate table and one pure function, :func:`vat`.

Money is computed in :class:`~decimal.Decimal` and rounded to cents, half up, the way most VAT
rules round an invoice's tax. Amounts enter and leave as JSON numbers (Python floats), like
every value a workflow step reads or returns; an amount of at most :data:`MAX_AMOUNT` has at
most 15 significant digits with its cents, so it survives the trip through a float exactly.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

import attrs

__all__ = ["CENT", "MAX_AMOUNT", "VAT_RATES", "Country", "Tax", "to_cents", "vat"]

Country = Literal[
    "AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "LU", "NL", "PL", "PT", "SE"
]
"""The ISO 3166 codes :data:`VAT_RATES` knows; the ``country`` parameter's JSON Schema lists
them (a test keeps the two in step)."""

VAT_RATES: Mapping[Country, Decimal] = types.MappingProxyType(
    {
        "AT": Decimal("0.20"),
        "BE": Decimal("0.21"),
        "DE": Decimal("0.19"),
        "DK": Decimal("0.25"),
        "ES": Decimal("0.21"),
        "FI": Decimal("0.255"),
        "FR": Decimal("0.20"),
        "IE": Decimal("0.23"),
        "IT": Decimal("0.22"),
        "LU": Decimal("0.17"),
        "NL": Decimal("0.21"),
        "PL": Decimal("0.23"),
        "PT": Decimal("0.23"),
        "SE": Decimal("0.25"),
    }
)
"""Standard VAT rates by country, as of 2025. An example table, not tax advice: reduced rates,
exemptions and reverse charge are out of its scope."""

CENT = Decimal("0.01")

MAX_AMOUNT = 10**12
"""The largest amount :func:`vat` accepts."""


def to_cents(amount: float | Decimal) -> Decimal:
    """``amount`` rounded to cents, half up. A float is read as the shortest decimal that
    prints as it (``0.1`` is ``0.1``, not ``0.1000000000000000055…``)."""
    exact = amount if isinstance(amount, Decimal) else Decimal(repr(float(amount)))
    return exact.quantize(CENT, rounding=ROUND_HALF_UP)


@attrs.frozen(kw_only=True)
class Tax:
    """The VAT on one amount: ``net`` (the amount, in cents), ``tax`` (``net`` * ``rate``,
    rounded to cents) and ``gross`` (``net`` + ``tax``, exactly)."""

    country: Country
    rate: Decimal
    net: Decimal
    tax: Decimal
    gross: Decimal

    def to_json(self) -> dict[str, str | float]:
        """The JSON value the ``billing.compute_tax`` action returns."""
        return {
            "country": self.country,
            "rate": float(self.rate),
            "net": float(self.net),
            "tax": float(self.tax),
            "gross": float(self.gross),
        }


def vat(amount: float | Decimal, country: Country) -> Tax:
    """The VAT on the net ``amount`` (rounded to cents first) at ``country``'s standard rate.

    Raises :class:`ValueError` for an amount below 0, above :data:`MAX_AMOUNT` or not finite,
    and :class:`KeyError` for a country :data:`VAT_RATES` does not list.
    """
    net = Decimal(repr(float(amount))) if not isinstance(amount, Decimal) else amount
    if not net.is_finite() or not 0 <= net <= MAX_AMOUNT:
        raise ValueError(f"amount must be between 0 and {MAX_AMOUNT}, got {amount}")
    net = to_cents(net)
    rate = VAT_RATES[country]
    tax = to_cents(net * rate)
    return Tax(country=country, rate=rate, net=net, tax=tax, gross=net + tax)
