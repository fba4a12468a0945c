"""Stripe's currencies and their minor units, from https://docs.stripe.com/currencies.

Stripe takes every amount in the currency's minor unit: cents for USD, whole yen for JPY (a
zero-decimal currency), fils for KWD (a three-decimal one). An invoice line is rounded to that
unit (https://stripe.com/docs/billing/subscriptions/decimal-amounts), so the same rate card bills
a different number of digits in each currency. A currency Stripe does not list is refused: a guess
here would bill 100 times over or under.

Special cases the page states and this table follows: ISK, HUF and TWD are two-decimal in the API
(amounts in hundredths) although charges and payouts must be whole units; the three-decimal
currencies take amounts in thousandths, and payments need the last digit 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
WHOLE_UNIT_CHARGES = frozenset(["isk"])
"""Two-decimal in the API, charged in whole units: "Currency ISK has become effectively
zero-decimal and charged amounts must be evenly divisible by 100 ... ISK will remain a two-decimal
currency in the Stripe API" (https://support.stripe.com/questions/deprecation-of-fractional-isk-charges-and-refunds)."""
TWO_DECIMAL = frozenset(
    [
        "usd",
        "aed",
        "afn",
        "all",
        "amd",
        "ang",
        "aoa",
        "ars",
        "aud",
        "awg",
        "azn",
        "bam",
        "bbd",
        "bdt",
        "bgn",
        "bmd",
        "bnd",
        "bob",
        "brl",
        "bsd",
        "bwp",
        "byn",
        "bzd",
        "cad",
        "cdf",
        "chf",
        "cny",
        "cop",
        "crc",
        "cve",
        "czk",
        "dkk",
        "dop",
        "dzd",
        "egp",
        "etb",
        "eur",
        "fjd",
        "fkp",
        "gbp",
        "gel",
        "gip",
        "gmd",
        "gtq",
        "gyd",
        "hkd",
        "hnl",
        "htg",
        "huf",
        "idr",
        "ils",
        "inr",
        "isk",
        "jmd",
        "kes",
        "kgs",
        "khr",
        "kyd",
        "kzt",
        "lak",
        "lbp",
        "lkr",
        "lrd",
        "lsl",
        "mad",
        "mdl",
        "mkd",
        "mmk",
        "mnt",
        "mop",
        "mur",
        "mvr",
        "mwk",
        "mxn",
        "myr",
        "mzn",
        "nad",
        "ngn",
        "nio",
        "nok",
        "npr",
        "nzd",
        "pab",
        "pen",
        "pgk",
        "php",
        "pkr",
        "pln",
        "qar",
        "ron",
        "rsd",
        "rub",
        "sar",
        "sbd",
        "scr",
        "sek",
        "sgd",
        "shp",
        "sle",
        "sos",
        "srd",
        "std",
        "szl",
        "thb",
        "tjs",
        "top",
        "try",
        "ttd",
        "twd",
        "tzs",
        "uah",
        "uyu",
        "uzs",
        "wst",
        "xcd",
        "yer",
        "zar",
        "zmw",
    ]
)
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


class UnknownCurrency(ValueError):
    def __init__(self, code: str) -> None:
        super().__init__(
            f"currency {code!r}: not one of Stripe's currencies (https://docs.stripe.com/currencies)"
        )
        self.code = code


@dataclass(frozen=True)
class Currency:
    code: str
    """Lowercase ISO 4217, as Stripe writes it."""
    exponent: int
    """Digits of the minor unit: 2 for usd, 0 for jpy, 3 for kwd."""

    @property
    def minor_unit(self) -> Decimal:
        return Decimal(1).scaleb(-self.exponent)

    def round(self, amount: Decimal) -> Decimal:
        """To the minor unit, half up: how Stripe rounds an invoice line."""
        return amount.quantize(self.minor_unit, rounding=ROUND_HALF_UP)

    def to_minor(self, amount: Decimal) -> Decimal:
        """An amount in major units (dollars) as minor units (cents), exactly: 0.001 USD is 0.1."""
        return amount.scaleb(self.exponent)

    def from_minor(self, amount: Decimal | int) -> Decimal:
        return Decimal(amount).scaleb(-self.exponent)

    @property
    def charge_step(self) -> int:
        """A charge is a whole multiple of this many minor units: 10 for the three-decimal
        currencies ("round amounts to the nearest ten"), 100 for ISK, else 1."""
        if self.exponent == 3:
            return 10
        return 100 if self.code in WHOLE_UNIT_CHARGES else 1

    def format(self, amount: Decimal) -> str:
        """$200.00, ¥1,200, 1.250 KWD; an amount finer than the minor unit (a unit price of
        $0.001) keeps its digits."""
        on_grid = amount == amount.quantize(self.minor_unit)
        shown = amount.quantize(self.minor_unit) if on_grid else amount.normalize()
        sign, text = ("-" if shown < 0 else ""), f"{abs(shown):,f}"
        symbol = _SYMBOLS.get(self.code)
        return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {self.code.upper()}"


def currency(code: str) -> Currency:
    """The currency Stripe knows by `code` (any case), or UnknownCurrency."""
    lower = code.lower()
    if lower in ZERO_DECIMAL:
        return Currency(lower, 0)
    if lower in THREE_DECIMAL:
        return Currency(lower, 3)
    if lower in TWO_DECIMAL:
        return Currency(lower, 2)
    raise UnknownCurrency(code)
