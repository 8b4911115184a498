"""Multiple tests: one family's p-values adjusted together, and the level of intervals that agree with them.

- Benjamini-Hochberg (1995): false discovery rate; the comparison's breakdown families (MMLU subjects, probes).
- Holm (1979): family-wise error rate; the sweep's comparisons with its best trial.
- Benjamini & Yekutieli (2005): false-coverage-rate adjusted intervals, whose exclusion of 0 matches BH's verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (step-up, false discovery rate) of one family of tests.

    ``adjusted[i] < alpha`` holds for exactly the tests the BH procedure rejects at FDR alpha. Among 57 MMLU
    subjects a couple fall below an uncorrected 0.05 by chance alone; adjusted, they do only on real evidence.

    Args:
        p_values: The family's raw p-values; None (no test) stays None and does not count towards the family.

    Returns:
        Adjusted p-values in the input order: min over k >= rank of p_(k) * m / k, capped at 1.
    """
    known = [(p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    m = len(known)
    running = 1.0
    for rank, (p, i) in reversed(list(enumerate(sorted(known), start=1))):
        running = min(running, p * m / rank)
        out[i] = running
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, family-wise error rate) of one family of tests.

    ``adjusted[i] < alpha`` holds for exactly the tests Holm's procedure rejects at FWER alpha: the chance that
    any rejection in the family is false stays below alpha, where BH bounds only the share of false ones. A sweep
    that calls a configuration worse than its best must not do so by chance in any of its comparisons.

    Args:
        p_values: The family's raw p-values; None (no test) stays None and does not count towards the family.

    Returns:
        Adjusted p-values in the input order: max over k <= rank of p_(k) * (m - k + 1), capped at 1.
    """
    known = [(p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    m = len(known)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(known), start=1):
        running = max(running, min(1.0, p * (m - rank + 1)))
        out[i] = running
    return out


def fcr_alpha(alpha: float, adjusted: Sequence[float | None]) -> float:
    """The level of a family's false-coverage-rate adjusted intervals (Benjamini & Yekutieli 2005): R * alpha / m.

    R is the number of tests Benjamini-Hochberg rejects (adjusted p < alpha; at least 1), m the family's size. A
    member's (1 - R alpha / m) interval excludes 0 exactly when BH rejects it, so the interval a gate reads and the
    verdict that reads the adjusted p tell one story.

    Args:
        alpha: The family's level.
        adjusted: ``benjamini_hochberg`` output for the family (None: no test, not counted).
    """
    known = [q for q in adjusted if q is not None and math.isfinite(q)]
    if not known:
        return alpha
    return max(1, sum(q < alpha for q in known)) * alpha / len(known)
