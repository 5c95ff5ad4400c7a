"""The report's statistics against published values and hand computations.

Sources of the golden numbers (4 decimals, as published):
- Newcombe RG (1998a), "Two-sided confidence intervals for the single proportion: comparison of seven methods",
  Stat Med 17:857-872, Table I, method 3 (Wilson score, no continuity correction).
- Newcombe RG (1998b), "Interval estimation for the difference between independent proportions: comparison of
  eleven methods", Stat Med 17:873-890, Table II, method 10 (hybrid score).
- Newcombe RG (1998c), "Improved confidence intervals for the difference between binomial proportions based on
  paired data", Stat Med 17:2635-2650 (method 10, the square-and-add interval implemented by the package below).
- Fagerland MW, Lydersen S, Laake P (2017), "Statistical Analysis of Contingency Tables", CRC Press, as checked
  by the tests of its R package contingencytables (tests/testthat/test-ch2.R, test-ch4.R, test-ch8.R): Wilson
  13/16; Newcombe hybrid score for Perondi et al. (2004) 7/34 vs 1/34; Newcombe square-and-add paired interval
  for Cavo et al. (2012) [[59, 6], [16, 80]]; exact and mid-p binomial tests of 13 of 16 against 1/2, which are
  McNemar's exact and mid-p tests with 13 and 3 discordant pairs.
"""

import math
from fractions import Fraction

import pytest

from lmdistill.reporting.stats import (
    compare_accuracies,
    mcnemar_exact,
    mcnemar_midp,
    newcombe_interval,
    newcombe_paired_interval,
    paired_table,
    wilson_interval,
    z_value,
)


def rounded(interval):
    return tuple(round(x, 4) for x in interval)


def test_z_value():
    assert z_value(0.95) == pytest.approx(1.959963984540054, abs=1e-12)  # Phi^-1(0.975), e.g. scipy norm.ppf
    assert z_value(0.90) == pytest.approx(1.6448536269514722, abs=1e-12)
    with pytest.raises(ValueError):
        z_value(1.0)


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (81, 263, (0.2553, 0.3662)),  # Newcombe 1998a, Table I
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        (13, 16, (0.5699, 0.9341)),  # Fagerland et al. 2017, ch. 2
    ],
)
def test_wilson_interval_published(k, n, expected):
    assert rounded(wilson_interval(k / n, n)) == expected


def test_wilson_interval_of_the_readme_blimp():
    # 1,340 pairs at 50%: standard error sqrt(0.25 / 1340) = 1.37 points, so about +-2.7 points at 95%.
    low, high = wilson_interval(0.5, 1340)
    assert (low + high) / 2 == pytest.approx(0.5)
    assert (high - low) / 2 == pytest.approx(1.959964 * math.sqrt(0.25 / 1340), rel=2e-3)  # ~ Wald here
    assert rounded((low, high)) == (0.4733, 0.5267)


def test_wilson_interval_edges_and_errors():
    assert wilson_interval(1.0, 20) == (pytest.approx(1 - 0.1611, abs=1e-4), 1.0)  # mirror of 0/20
    for p in (0.0, 0.3, 0.5, 0.97, 1.0):
        low, high = wilson_interval(p, 50)
        assert 0.0 <= low <= p <= high <= 1.0
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError):
        wilson_interval(1.5, 10)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "expected"),
    [
        (56, 70, 48, 80, (0.0524, 0.3339)),  # Newcombe 1998b, Table II, method 10
        (9, 10, 3, 10, (0.1705, 0.8090)),
        (6, 7, 2, 7, (0.0582, 0.8062)),
        (5, 56, 0, 29, (-0.0381, 0.1926)),
        (0, 10, 0, 10, (-0.2775, 0.2775)),
        (7, 34, 1, 34, (0.0189, 0.3404)),  # Fagerland et al. 2017, ch. 4 (Perondi et al. 2004)
    ],
)
def test_newcombe_interval_published(k1, n1, k2, n2, expected):
    assert rounded(newcombe_interval(k1 / n1, n1, k2 / n2, n2)) == expected


def test_newcombe_paired_interval_published():
    # Cavo et al. (2012), Fagerland et al. 2017, ch. 8: a = 59 both, b = 6 first only, c = 16 second only, 80 none.
    assert rounded(newcombe_paired_interval(59, 6, 16, 80)) == (-0.1186, -0.0046)


def test_paired_interval_is_narrower_than_unpaired_for_correlated_models():
    # Two models that agree on most items: 600 both right, 40 only the first, 20 only the second, 680 neither.
    a, b, c, e = 600, 40, 20, 680
    n = a + b + c + e
    paired = newcombe_paired_interval(a, b, c, e)
    unpaired = newcombe_interval((a + b) / n, n, (a + c) / n, n)
    assert paired[0] > unpaired[0] and paired[1] < unpaired[1]
    assert paired[0] > 0 > unpaired[0]  # the pairing shows a difference the unpaired interval cannot
    # Uncorrelated tables (a·e - b·c within [0, n/2]) give phi = 0: the unpaired interval.
    assert newcombe_paired_interval(25, 25, 25, 25) == pytest.approx(newcombe_interval(0.5, 100, 0.5, 100))


def test_mcnemar_by_hand():
    # b = 1, c = 9: X ~ Bin(10, 1/2); P(X <= 1) = (1 + 10) / 1024.
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, abs=1e-15)
    assert mcnemar_midp(1, 9) == pytest.approx(2 * (11 - 10 / 2) / 1024, abs=1e-15)  # 12/1024
    assert mcnemar_midp(9, 1) == mcnemar_midp(1, 9)
    # b = c = 5: exact 1; mid-p 1 - P(X = 5)/2 = 1 - 252/2048.
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_midp(5, 5) == pytest.approx(1 - 252 / 2048, abs=1e-15)
    assert mcnemar_exact(0, 0) == mcnemar_midp(0, 0) == 1.0
    # b = 13, c = 3 (Fagerland et al. 2017, ch. 2: P = 0.02127 exact, 0.01273 mid-p).
    assert mcnemar_exact(13, 3) == pytest.approx((1 + 16 + 120 + 560) * 2 / 65536, abs=1e-15)
    assert round(mcnemar_exact(13, 3), 5) == 0.02127
    assert round(mcnemar_midp(13, 3), 5) == 0.01273


@pytest.mark.parametrize(("b", "c"), [(950, 1050), (480, 520), (0, 60), (3000, 3200)])
def test_mcnemar_large_counts_match_exact_arithmetic(b, c):
    m, k = b + c, min(b, c)
    cdf = Fraction(sum(math.comb(m, j) for j in range(k + 1)), 2**m)
    pmf = Fraction(math.comb(m, b), 2**m)
    assert mcnemar_exact(b, c) == pytest.approx(float(min(1, 2 * cdf)), rel=1e-9, abs=1e-300)
    assert mcnemar_midp(b, c) == pytest.approx(float(2 * cdf - pmf), rel=1e-9, abs=1e-300)


def test_paired_table():
    assert paired_table([1, 1, 0, 0, 1], [1, 0, 1, 0, 0]) == (1, 2, 1, 1)
    assert paired_table([True, False], [True, True]) == (1, 0, 1, 0)
    with pytest.raises(ValueError):
        paired_table([1], [1, 0])


def test_compare_accuracies_paired_and_unpaired():
    # 1,340 items, the second model right on the same items as the first plus 30 more: +2.2 points.
    first = [1] * 670 + [0] * 670
    second = [1] * 700 + [0] * 640
    unpaired = compare_accuracies(700 / 1340, 1340, 670 / 1340, 1340)
    assert not unpaired.paired and unpaired.p_value is None
    assert unpaired.diff == pytest.approx(30 / 1340)
    assert not unpaired.significant  # inside the +-3.8-point noise of two independent 1,340-item accuracies
    paired = compare_accuracies(700 / 1340, 1340, 670 / 1340, 1340, second, first)
    assert paired.paired and paired.diff == pytest.approx(30 / 1340)
    assert paired.p_value == pytest.approx(mcnemar_midp(30, 0)) and paired.p_value < 1e-8
    assert paired.significant and paired.low > 0
    # Lists of different lengths cannot be paired: the unpaired fallback.
    assert not compare_accuracies(0.5, 4, 0.5, 4, [1, 0, 1, 0], [1, 0]).paired


def test_t_value_matches_printed_tables_and_tends_to_z():
    from lmdistill.reporting.stats import t_value, z_value

    for df, printed in ((1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042)):  # two-sided 95%, any t table
        assert t_value(df) == pytest.approx(printed, abs=5e-4)
    assert t_value(100000) == pytest.approx(z_value(), abs=1e-4)
    with pytest.raises(ValueError, match="df must be >= 1"):
        t_value(0)
