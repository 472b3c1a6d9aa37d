"""Curve fits of the trend rules: a robust slope and a power-law learning curve (plain Python, no Lightning)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def theil_sen_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Theil-Sen slope: the median of the pairwise slopes ``(y_j - y_i) / (x_j - x_i)`` (robust to outliers).

    Returns 0.0 when fewer than two distinct ``xs`` are given.
    """
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]
    ]
    return statistics.median(slopes) if slopes else 0.0


def fit_power_law(steps: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit of ``f(t) = c + a * t ** -alpha`` with ``c, a >= 0``; ``alpha`` on a grid in (0, 3].

    Returns:
        ``(c, a, alpha)``; ``a = 0`` (and ``c`` the mean) when the data do not decrease.
    """
    mean_y = statistics.fmean(values)
    best = (sum((y - mean_y) ** 2 for y in values), mean_y, 0.0, 1.0)
    for alpha in [0.05 * i for i in range(1, 61)]:
        xs = [t ** -alpha for t in steps]
        mean_x = statistics.fmean(xs)
        sxx = sum((x - mean_x) ** 2 for x in xs)
        if sxx <= 0:
            continue
        a = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values)) / sxx
        c = mean_y - a * mean_x
        if c < 0:  # the floor of a distance is >= 0: refit through the origin
            c, a = 0.0, sum(x * y for x, y in zip(xs, values)) / sum(x * x for x in xs)
        if a <= 0:
            continue
        sse = sum((c + a * x - y) ** 2 for x, y in zip(xs, values))
        if sse < best[0]:
            best = (sse, c, a, alpha)
    return best[1], best[2], best[3]


__all__ = ["fit_power_law", "theil_sen_slope"]
