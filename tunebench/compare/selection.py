"""Which sweep configuration to choose, with confidence: the set indistinguishable from the best, then the cheapest.

The best trial's validation perplexity is the minimum of many noisy estimates, so it is biased low (the winner's
curse), and the runners-up often differ from it by less than the noise. Each of the top candidates is compared with
the best on the same validation conversations (paired bootstrap of the per-conversation token NLL, as
``core.stats.paired_bootstrap`` pairs base and tuned), the p-values are Holm-corrected as one family, and every
candidate the family does not call worse is indistinguishable from the best. Of those, the cheapest wins: fewest
trainable parameters, then fewest optimizer steps, then the lower perplexity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tunebench.core.multiplicity import holm
from tunebench.core.numbers import fmt
from tunebench.core.stats import paired_bootstrap

TOP = 10
"""Candidates compared with the best; the rest rank below all of them and are not in the set."""


@dataclass(frozen=True)
class Candidate:
    """A finished trial as selection sees it."""

    number: int
    value: float
    """Validation perplexity (pooled over its seeds)."""
    items: list[dict[str, Any]]
    """Per validation conversation: ``{"id", "num": summed NLL, "den": tokens}`` (summed over seeds)."""
    trainable_params: int
    steps: int


@dataclass(frozen=True)
class Versus:
    """One candidate against the best: Δ = its perplexity − the best's, on the same conversations."""

    number: int
    delta: float
    low: float
    high: float
    p_value: float
    p_holm: float
    indistinguishable: bool


@dataclass
class Selection:
    """The outcome: the best, each comparison, the indistinguishable set and the choice with its reason."""

    best: int
    alpha: float
    top: int
    compared: list[Versus] = field(default_factory=list)
    indistinguishable: list[int] = field(default_factory=list)
    """Trial numbers, best first, then by perplexity."""
    chosen: int = -1
    reason: str = ""
    not_compared: list[int] = field(default_factory=list)
    """Finished trials below the top ``top``: not in the set (they rank below every compared one)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select(
    candidates: Sequence[Candidate], alpha: float = 0.05, top: int = TOP, n_boot: int = 2000, seed: int = 0
) -> Selection:
    """Compare the top candidates with the best, Holm-corrected, and choose the cheapest indistinguishable one.

    Args:
        candidates: finished (not pruned) trials with per-conversation records on the same conversations.
        alpha: family-wise error rate of the comparisons.
        top: how many candidates (the best included) are compared.
        n_boot: bootstrap resamples per comparison.
        seed: seed of every comparison's resampling (the same for each: reproducible).

    Raises:
        ValueError: no candidates, or records that do not cover the same conversations.
    """
    if not candidates:
        raise ValueError("no finished trial to select from")
    ranked = sorted(candidates, key=lambda c: (c.value, c.number))
    best, rest = ranked[0], ranked[1:top]
    out = Selection(best=best.number, alpha=alpha, top=top, not_compared=[c.number for c in ranked[top:]])
    tests = [
        paired_bootstrap(best.items, c.items, aggregate="exp_ratio", n_boot=n_boot, alpha=alpha, seed=seed)
        for c in rest
    ]
    adjusted = holm([t.p_value for t in tests])
    for c, t, p in zip(rest, tests, adjusted, strict=True):
        same = p is None or p >= alpha
        out.compared.append(
            Versus(c.number, t.delta, t.low, t.high, t.p_value, float(p if p is not None else 1.0), same)
        )
    in_set = [best] + [c for c, v in zip(rest, out.compared, strict=True) if v.indistinguishable]
    out.indistinguishable = [c.number for c in in_set]
    chosen = min(in_set, key=lambda c: (c.trainable_params, c.steps, c.value, c.number))
    out.chosen = chosen.number
    out.reason = _reason(best, chosen, in_set, alpha, len(rest))
    return out


def _reason(best: Candidate, chosen: Candidate, in_set: list[Candidate], alpha: float, n_compared: int) -> str:
    level = f"{100 * (1 - alpha):g}%"
    if len(in_set) == 1 and n_compared == 0:
        return f"trial {best.number}: the only finished trial, so nothing was compared with it"
    if len(in_set) == 1:
        return (
            f"trial {best.number}: every other compared configuration is worse than it (Holm-corrected, family-"
            f"wise {level}), so the best is the only candidate"
        )
    if chosen.number == best.number:
        return (
            f"trial {best.number}: the best, and also the cheapest of the {len(in_set)} configurations "
            f"indistinguishable from it ({chosen.trainable_params:,} trainable parameters, {chosen.steps} steps)"
        )
    return (
        f"trial {chosen.number}: the cheapest of the {len(in_set)} configurations indistinguishable from the best "
        f"(trial {best.number}, perplexity {fmt(best.value)}): {chosen.trainable_params:,} trainable parameters "
        f"and {chosen.steps} steps against the best's {best.trainable_params:,} and {best.steps}, at perplexity "
        f"{fmt(chosen.value)}; no Holm-corrected comparison at family-wise {level} separates them"
    )
