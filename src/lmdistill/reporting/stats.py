r"""Uncertainty of accuracies: Wilson score intervals, differences between two models, McNemar's test.

An accuracy ``p`` measured on ``n`` items is a binomial proportion; its sampling noise is that of the choice
of items, not of training (another seed, or the same seed on another machine, gives another model). With
``z`` the normal quantile of the confidence level (1.95996 for 95%):

Wilson score interval (Wilson 1927, "Probable inference, the law of succession, and statistical inference",
JASA 22:209-212; Newcombe 1998a, "Two-sided confidence intervals for the single proportion: comparison of seven
methods", Stat. Med. 17:857-872, method 3)::

    centre = (p + z²/(2n)) / (1 + z²/n)
    half   = z / (1 + z²/n) · sqrt(p(1 - p)/n + z²/(4n²))
    [l, u] = [centre - half, centre + half]

It stays inside [0, 1] and keeps close to its nominal coverage for small ``n`` and ``p`` near 0 or 1, where the
Wald interval ``p ± z·sqrt(p(1-p)/n)`` does not (Brown, Cai & DasGupta 2001, Stat. Sci. 16:101-133).

Difference ``d = p1 - p2`` of two independent accuracies, Newcombe's hybrid score ("square-and-add") interval
(Newcombe 1998b, "Interval estimation for the difference between independent proportions: comparison of eleven
methods", Stat. Med. 17:873-890, method 10), from the Wilson intervals ``[l1, u1]``, ``[l2, u2]``::

    [d - sqrt((p1 - l1)² + (u2 - p2)²),  d + sqrt((u1 - p1)² + (p2 - l2)²)]

Two models scored on the same ``n`` items, with per-item correctness: the 2x2 table ``a`` (both right), ``b``
(only the first right), ``c`` (only the second right), ``e`` (both wrong); ``p1 = (a + b)/n``,
``p2 = (a + c)/n``, ``d = (b - c)/n``. Newcombe's paired interval (Newcombe 1998c, "Improved confidence
intervals for the difference between binomial proportions based on paired data", Stat. Med. 17:2635-2650,
method 10) subtracts the covariance of the two accuracies through a correlation ``phi``::

    A   = a·e - b·c
    phi = (A - n/2) / sqrt((a+b)(c+e)(a+c)(b+e))   if A > n/2
          0                                          if 0 <= A <= n/2 (or a margin is 0)
          A / sqrt((a+b)(c+e)(a+c)(b+e))             if A < 0
    [d - sqrt((p1-l1)² - 2·phi·(p1-l1)(u2-p2) + (u2-p2)²),  d + sqrt((u1-p1)² - 2·phi·(u1-p1)(p2-l2) + (p2-l2)²)]

With ``phi = 0`` this is the unpaired interval above; models scored on the same items mostly get the same items
right (``phi > 0``), so the unpaired interval is wider: a conservative stand-in when per-item correctness is
not recorded.

McNemar's test (McNemar 1947, Psychometrika 12:153-157) of "both models have the same accuracy" on paired
items uses only the discordant items: under the null each of the ``m = b + c`` is equally likely to favour
either model, ``X ~ Binomial(m, 1/2)``. Exact two-sided p-value ``min(1, 2·P(X <= min(b, c)))``; the mid-p
value (recommended by Fagerland, Lydersen & Laake 2013, BMC Med. Res. Methodol. 13:91) counts the observed
outcome's own probability half: ``2·P(X <= min(b, c)) - P(X = b)`` when ``b != c``, ``1 - P(X = b)/2`` when
``b = c``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "Difference",
    "compare_accuracies",
    "mcnemar_exact",
    "mcnemar_midp",
    "newcombe_interval",
    "newcombe_paired_interval",
    "paired_table",
    "t_value",
    "wilson_interval",
    "z_value",
]


def z_value(confidence: float = 0.95) -> float:
    """The two-sided standard normal quantile of a confidence level: 1.959964 for 0.95.

    Args:
        confidence (float): in (0, 1).

    Returns:
        float: ``z`` with ``P(|Z| <= z) = confidence``.

    Raises:
        ValueError: ``confidence`` is not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def t_value(df: int, confidence: float = 0.95) -> float:
    """The two-sided Student t quantile with ``df`` degrees of freedom: 4.3027 for df = 2 at 0.95 (scipy).

    The half-width of a mean's interval over n seeds is ``t_value(n - 1) * std / sqrt(n)``.

    Raises:
        ValueError: ``df`` < 1 or ``confidence`` not in (0, 1).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def wilson_interval(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's (1927) score interval of a binomial proportion (see the module docstring for the formula).

    Args:
        p (float): the observed proportion (an accuracy in [0, 1], ``k / n``).
        n (int): the number of items, > 0.
        confidence (float): the confidence level.

    Returns:
        tuple[float, float]: ``(lower, upper)`` in [0, 1].

    Raises:
        ValueError: ``n`` < 1 or ``p`` outside [0, 1].
    """
    if n < 1:
        raise ValueError(f"a Wilson interval needs n >= 1 items, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion must be in [0, 1], got {p}")
    z2 = z_value(confidence) ** 2
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = math.sqrt(z2) / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # The interval always holds p (at p = 0 or 1 an end is exactly p): clamp the rounding error there.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def newcombe_interval(p1: float, n1: int, p2: float, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998b, method 10) interval of ``p1 - p2`` for two independent proportions.

    Args:
        p1 (float): the first proportion, on ``n1`` items.
        n1 (int): its number of items.
        p2 (float): the second proportion, on ``n2`` items.
        n2 (int): its number of items.
        confidence (float): the confidence level.

    Returns:
        tuple[float, float]: ``(lower, upper)`` of the difference, in [-1, 1].
    """
    return _square_and_add(p1, wilson_interval(p1, n1, confidence), p2, wilson_interval(p2, n2, confidence), 0.0)


def paired_table(first: Sequence[int], second: Sequence[int]) -> tuple[int, int, int, int]:
    """The 2x2 table of two models' per-item correctness on the same items.

    Args:
        first (Sequence[int]): 1/0 (or True/False) per item for the first model.
        second (Sequence[int]): the same items, in the same order, for the second model.

    Returns:
        tuple[int, int, int, int]: ``(a, b, c, e)``: both right, only the first right, only the second right,
        both wrong.

    Raises:
        ValueError: the sequences differ in length.
    """
    if len(first) != len(second):
        raise ValueError(f"paired items must match: {len(first)} != {len(second)}")
    a = b = c = 0
    for x, y in zip(first, second, strict=True):
        if x and y:
            a += 1
        elif x:
            b += 1
        elif y:
            c += 1
    return a, b, c, len(first) - a - b - c


def newcombe_paired_interval(a: int, b: int, c: int, e: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998c, method 10) interval of ``p1 - p2`` for two proportions on the same items.

    Args:
        a (int): items both models got right.
        b (int): items only the first got right.
        c (int): items only the second got right.
        e (int): items both got wrong.
        confidence (float): the confidence level.

    Returns:
        tuple[float, float]: ``(lower, upper)`` of ``(b - c) / n``.

    Raises:
        ValueError: no items, or a negative count.
    """
    if min(a, b, c, e) < 0:
        raise ValueError(f"counts must be >= 0, got {(a, b, c, e)}")
    n = a + b + c + e
    p1, p2 = (a + b) / n if n else 0.0, (a + c) / n if n else 0.0
    interval1, interval2 = wilson_interval(p1, n, confidence), wilson_interval(p2, n, confidence)
    margins = (a + b) * (c + e) * (a + c) * (b + e)
    cross = a * e - b * c
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    return _square_and_add(p1, interval1, p2, interval2, phi)


def _square_and_add(
    p1: float, interval1: tuple[float, float], p2: float, interval2: tuple[float, float], phi: float
) -> tuple[float, float]:
    (l1, u1), (l2, u2) = interval1, interval2
    d = p1 - p2
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return max(-1.0, d - math.sqrt(max(0.0, below))), min(1.0, d + math.sqrt(max(0.0, above)))


def _binomial_half(m: int, k: int) -> float:
    """``P(X = k)`` for ``X ~ Binomial(m, 1/2)``, in floating point (no big integers for large ``m``)."""
    return math.exp(math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) - m * math.log(2))


def _binomial_half_cdf(m: int, k: int) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(m, 1/2)``, summed from ``k`` down (terms fall off fast below the mode)."""
    if k < 0:
        return 0.0
    term = _binomial_half(m, k)
    total = term
    for j in range(k, 0, -1):  # P(X = j - 1) = P(X = j) · j / (m - j + 1)
        term *= j / (m - j + 1)
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, total)


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact (conditional binomial) two-sided p-value from the discordant counts.

    Args:
        b (int): items only the first model got right.
        c (int): items only the second model got right.

    Returns:
        float: ``min(1, 2·P(X <= min(b, c)))``, ``X ~ Binomial(b + c, 1/2)``; 1.0 when ``b = c = 0``.
    """
    m = b + c
    return 1.0 if m == 0 else min(1.0, 2 * _binomial_half_cdf(m, min(b, c)))


def mcnemar_midp(b: int, c: int) -> float:
    """McNemar's mid-p two-sided p-value from the discordant counts (Fagerland, Lydersen & Laake 2013).

    Args:
        b (int): items only the first model got right.
        c (int): items only the second model got right.

    Returns:
        float: ``2·P(X <= min(b, c)) - P(X = b)`` if ``b != c``, else ``1 - P(X = b)/2``; 1.0 when ``b = c = 0``.
    """
    m = b + c
    if m == 0:
        return 1.0
    if b == c:
        return 1.0 - 0.5 * _binomial_half(m, b)
    return min(1.0, 2 * _binomial_half_cdf(m, min(b, c)) - _binomial_half(m, b))


@dataclass(frozen=True)
class Difference:
    """The difference ``p1 - p2`` of two accuracies and whether it stands out of the item-sampling noise.

    Attributes:
        diff (float): ``p1 - p2`` (proportions, not percent).
        low (float): the lower end of its interval.
        high (float): the upper end.
        paired (bool): computed from per-item correctness on the same items (else from the two accuracies and
            their item counts, as if independent).
        p_value (float | None): McNemar's mid-p value (paired only).
        significant (bool): paired: ``p_value < 1 - confidence``; unpaired: the interval excludes 0.
    """

    diff: float
    low: float
    high: float
    paired: bool
    p_value: float | None
    significant: bool


def compare_accuracies(
    p1: float,
    n1: int,
    p2: float,
    n2: int,
    correct1: Sequence[int] | None = None,
    correct2: Sequence[int] | None = None,
    confidence: float = 0.95,
) -> Difference:
    """Compare two accuracies: paired (McNemar mid-p, Newcombe 1998c) when both per-item lists are given.

    Args:
        p1 (float): the first accuracy, on ``n1`` items.
        n1 (int): its number of items.
        p2 (float): the second accuracy, on ``n2`` items.
        n2 (int): its number of items.
        correct1 (Sequence[int] | None): the first model's 1/0 per item, or None.
        correct2 (Sequence[int] | None): the second model's, on the same items in the same order, or None.
        confidence (float): the confidence level (the test's level is ``1 - confidence``).

    Returns:
        Difference: paired when both lists are given and have the same length, else unpaired (Newcombe 1998b).
    """
    if correct1 is not None and correct2 is not None and len(correct1) == len(correct2) and len(correct1) > 0:
        a, b, c, e = paired_table(correct1, correct2)
        n = a + b + c + e
        low, high = newcombe_paired_interval(a, b, c, e, confidence)
        p_value = mcnemar_midp(b, c)
        return Difference((b - c) / n, low, high, True, p_value, p_value < 1 - confidence)
    low, high = newcombe_interval(p1, n1, p2, n2, confidence)
    return Difference(p1 - p2, low, high, False, None, low > 0 or high < 0)
