"""Small-sample statistics shared by the decision report and the model comparison: 95% intervals of a proportion,
of a mean, and of the differences between two groups (uplift of treatment over control).

Pure functions of counts and sums, so they work on aggregates computed in SQL (no row is loaded to get a variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The two-sided 95% quantile of the standard normal distribution.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound for small counts and rates near 0 or 1)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # The bounds are exactly 0 and 1 at the extremes (the formula leaves rounding dust like 3e-17 there).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def mean_interval(values: Sequence[float], z: float = Z_95) -> tuple[float, float, float]:
    """Mean and a normal-approximation confidence interval."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(variance / n)
    return mean, mean - half, mean + half


#: Exact two-sided 95% t quantiles at 1, 2 and 3 degrees of freedom, where the expansion below is too low.
_T_95_SMALL_DF = ((1.0, 12.706204736174707), (2.0, 4.302652729749464), (3.0, 3.182446305283708))


def t_quantile_95(df: float) -> float:
    """The two-sided 95% quantile of Student's t with `df` (possibly fractional, Welch) degrees of freedom.

    Above 3 degrees of freedom, the Cornish-Fisher expansion around the normal quantile (within 0.004 of the exact
    value, 1e-5 from 10 up), which spares a SciPy dependency for one number. Up to 3, linear interpolation in 1/df
    between exact values, which errs on the wide side. Welch's degrees of freedom never fall below 1.
    """
    if df <= 1:
        return _T_95_SMALL_DF[0][1]
    if df <= 3:
        (df_low, t_low), (df_high, t_high) = next(
            (a, b) for a, b in zip(_T_95_SMALL_DF, _T_95_SMALL_DF[1:], strict=False) if df <= b[0]
        )
        share = (1 / df_low - 1 / df) / (1 / df_low - 1 / df_high)
        return t_low + share * (t_high - t_low)
    z = Z_95
    z2 = z * z
    return (
        z
        + z * (z2 + 1) / (4 * df)
        + z * ((5 * z2 + 16) * z2 + 3) / (96 * df**2)
        + z * (((3 * z2 + 19) * z2 + 17) * z2 - 15) / (384 * df**3)
        + z * ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) / (92160 * df**4)
    )


@dataclass(frozen=True)
class Moments:
    """A sample summarised by its size, sum and sum of squares (what one SQL GROUP BY yields)."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """The unbiased sample variance (0 below two observations); clamped at 0 against rounding."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))

    def mean_interval(self) -> tuple[float, float, float]:
        """Mean and its 95% t interval; unbounded below two observations (nothing is known about the spread)."""
        if self.n < 2:
            return self.mean, -math.inf, math.inf
        half = t_quantile_95(self.n - 1) * math.sqrt(self.variance / self.n)
        return self.mean, self.mean - half, self.mean + half


def proportion_difference(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int
) -> tuple[float, float, float]:
    """p_a - p_b with Newcombe's hybrid score 95% interval (built from the two Wilson intervals).

    Unlike the Wald interval it does not collapse to a point when a rate is 0 or 1, which is common for small arms.
    """
    if trials_a == 0 or trials_b == 0:
        return 0.0, -1.0, 1.0
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    low_a, high_a = wilson_interval(successes_a, trials_a)
    low_b, high_b = wilson_interval(successes_b, trials_b)
    difference = p_a - p_b
    return (
        difference,
        difference - math.hypot(p_a - low_a, high_b - p_b),
        difference + math.hypot(high_a - p_a, p_b - low_b),
    )


def welch_difference(a: Moments, b: Moments) -> tuple[float, float, float]:
    """mean_a - mean_b with Welch's 95% interval (unequal variances, Welch-Satterthwaite degrees of freedom);
    unbounded when either sample has fewer than two observations."""
    difference = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return difference, -math.inf, math.inf
    share_a, share_b = a.variance / a.n, b.variance / b.n
    spread = share_a + share_b
    if spread == 0:
        return difference, difference, difference  # both samples constant: the difference is exact
    df = spread**2 / (share_a**2 / (a.n - 1) + share_b**2 / (b.n - 1))
    half = t_quantile_95(df) * math.sqrt(spread)
    return difference, difference - half, difference + half
