"""Seed statistics for ``compare``: mean and spread of per-seed numbers, and the verdict rule built on them.

Every number a study reports is measured once per seed; a ``Stat`` keeps the per-seed values and gives their
mean and sample standard deviation (``std`` is ``None`` with a single seed: a spread cannot be estimated).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"


@dataclass(frozen=True)
class Stat:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof=1); None below two seeds."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (self.n - 1))

    def format(self, digits: int = 2) -> str:
        if not self.values:
            return "-"
        text = f"{self.mean:.{digits}f}"
        return text if self.std is None else f"{text} ± {self.std:.{digits}f}"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def stat(values: Iterable[float | None]) -> Stat:
    """A Stat of the finite values (missing or non-finite ones are dropped)."""
    return Stat(tuple(float(v) for v in values if v is not None and math.isfinite(v)))


def per_seed(records: Iterable[dict], key: Callable[[dict], object], value: Callable[[dict], float | None]) -> dict:
    """``{key(record): Stat of value(record) over the records' seeds}``."""
    grouped: dict[object, list] = defaultdict(list)
    for record in records:
        grouped[key(record)].append(value(record))
    return {k: stat(v) for k, v in grouped.items()}


def verdict_against_threshold(value: Stat, threshold: float, holds_below: bool) -> str:
    """Whether the published claim "value < threshold" (or "> threshold") holds, given the seed spread.

    The claim holds (``agrees``) when the whole interval mean ± std lies on its side of the threshold, fails
    (``disagrees``) when the interval lies on the other side, and is ``inconclusive`` when the interval
    straddles the threshold or when there are fewer than two seeds (no spread to judge by).
    """
    if value.n < 2:
        return INCONCLUSIVE
    low, high = value.mean - value.std, value.mean + value.std
    below, above = high < threshold, low > threshold
    if below or above:
        return AGREES if below == holds_below else DISAGREES
    return INCONCLUSIVE


__all__ = ["Stat", "stat", "per_seed", "verdict_against_threshold", "AGREES", "DISAGREES", "INCONCLUSIVE"]
