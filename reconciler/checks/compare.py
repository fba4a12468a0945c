"""Where two sets of totals disagree: pure, so that the reconciler and replay share one notion of
drift. Drift is Stripe's (or the re-derived) total minus ours: positive means billed more than
we counted. Beside it, usage not billed on purpose (`Unbilled`), as reconcile lists it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Difference(Generic[K]):
    key: K
    ours: int
    theirs: int

    @property
    def drift(self) -> int:
        return self.theirs - self.ours

    @property
    def percent(self) -> Decimal | None:
        """Drift relative to our total; None when we counted nothing."""
        if self.ours == 0:
            return None
        return (Decimal(self.drift) * 100 / Decimal(self.ours)).quantize(Decimal("0.001"))


def compare(ours: Mapping[K, int], theirs: Mapping[K, int]) -> list[Difference[K]]:
    """Every key either side has, in key order; zero totals on both sides are left out."""
    keys = sorted(set(ours) | set(theirs), key=repr)
    found = [Difference(k, ours.get(k, 0), theirs.get(k, 0)) for k in keys]
    return [d for d in found if d.ours or d.theirs]


def differing(differences: list[Difference[K]], threshold: int = 0) -> list[Difference[K]]:
    return [d for d in differences if abs(d.drift) > threshold]


@dataclass(frozen=True)
class Unbilled:
    """Usage of a (customer, meter) not billed, and why: refused, waiting for its customer, or
    arriving after its invoice was finalized."""

    customer_id: str
    meter: str
    reason: str
    value: int
    revisions: int
