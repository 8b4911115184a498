"""Judged records -> metrics: ``judge/<set>/win_rate`` (and per category), with validity and position bias.

A metric's value and interval are the raw win rate's (``core.pairwise.win_rate``). Its ``details`` carry
``paired: "win_rate"`` (``compare.rows`` reads such a metric as one paired row: the length-controlled rate - 0.5,
the raw rate beside it), the counts, the raw rate's score-test p and MDE, the length-controlled win rate with its
interval and p (``lc_*``), the position-consistency rate, each order's win rate, the parse failures, the sanity share
and ``valid`` with the reason when it is not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunebench.core import pairwise
from tunebench.core.config_schema import EvalConfig, JudgeConfig
from tunebench.core.numbers import fmt
from tunebench.evals.families import MetricShape
from tunebench.evals.judge.prompts import set_name
from tunebench.evals.results import Metric

PAIRED_KIND = "win_rate"


def _order_rate(scores: list[int]) -> float | None:
    return None if not scores else float(np.mean([(s + 1) / 2 for s in scores]))


def validity(unparsed: int, judgments: int, sanity: dict[str, Any], cfg: JudgeConfig, decided: int) -> str | None:
    """Why the metric cannot be trusted, or None when it can."""
    share = unparsed / judgments if judgments else 1.0
    if decided == 0:
        return "no judged prompt had a verdict in both orders"
    if share > cfg.max_parse_failure:
        return (
            f"{unparsed} of {judgments} judgments ({share:.0%}) gave no verdict, above "
            f"eval.judge.max_parse_failure={cfg.max_parse_failure:g}"
        )
    if sanity["share"] < cfg.min_sanity:
        return (
            f"the judge got {sanity['right']} of {sanity['n']} planted pairs right ({sanity['share']:.0%}), "
            f"below eval.judge.min_sanity={cfg.min_sanity:g}: unreliable judge"
        )
    return None


def win_rate_metric(
    name: str, records: list[dict[str, Any]], alpha: float
) -> tuple[Metric, list[dict[str, Any]]] | None:
    """One win-rate metric over the records that have a verdict in both orders (None when there are none)."""
    done = [r for r in records if r["score"] is not None]
    if not done:
        return None
    scores = [r["score"] for r in done]
    clusters = [r["cluster"] for r in done]
    wr = pairwise.win_rate(scores, clusters, alpha)
    lc = pairwise.length_controlled(
        scores, [r["tuned_tokens"] for r in done], [r["base_tokens"] for r in done], clusters, alpha
    )
    both = [r for r in records if r["consistent"] is not None]
    details = {
        "paired": PAIRED_KIND,
        "wins": wr.wins,
        "ties": wr.ties,
        "losses": wr.losses,
        "p_value": wr.p_value,
        "mde": wr.mde,
        "clusters": wr.clusters,
        "lc_win_rate": lc.value,
        "lc_ci": [lc.low, lc.high],
        "lc_slope": lc.slope,
        "lc_p_value": lc.p_value,
        "lc_design_effect": lc.design_effect,
        "lc_method": lc.method,
        "consistency": (sum(r["consistent"] for r in both) / len(both)) if both else None,
        "win_rate_base_first": _order_rate([r["score_base_first"] for r in both]),
        "win_rate_tuned_first": _order_rate([r["score_tuned_first"] for r in both]),
        "mean_tokens": {
            "base": float(np.mean([r["base_tokens"] for r in done])),
            "tuned": float(np.mean([r["tuned_tokens"] for r in done])),
        },
        "unparsed_prompts": len(records) - len(done),
    }
    items = [{"id": r["id"], "num": (r["score"] + 1) / 2, "den": 1.0, "cluster": r["cluster"]} for r in done]
    metric = Metric(
        name=name,
        value=wr.value,
        higher_is_better=True,
        n=wr.n,
        unit="judged prompts",
        ci_low=wr.low,
        ci_high=wr.high,
        ci_method=wr.method,
        group="judge",
        items=name,
        details=details,
    )
    return metric, items


def set_metrics(
    name: str,
    records: list[dict[str, Any]],
    judgments: int,
    unparsed: int,
    sanity: dict[str, Any],
    cfg: JudgeConfig,
    alpha: float,
    judge_note: str | None = None,
) -> list[tuple[Metric, list[dict[str, Any]]]]:
    """The set's win rate and one per category (categories only when there are several)."""
    decided = sum(r["score"] is not None for r in records)
    reason = validity(unparsed, judgments, sanity, cfg, decided)
    out = []
    head = win_rate_metric(f"judge/{name}/win_rate", records, alpha)
    if head is None:  # nothing decided: a metric without a value, invalid, so the gate reads it and says why
        head = (
            Metric(
                name=f"judge/{name}/win_rate",
                value=float("nan"),
                higher_is_better=True,
                n=0,
                unit="judged prompts",
                group="judge",
                details={"paired": PAIRED_KIND},
            ),
            [],
        )
    cats = sorted({r["category"] for r in records})
    if len(cats) > 1:
        for cat in cats:
            m = win_rate_metric(f"judge/{name}/{cat}/win_rate", [r for r in records if r["category"] == cat], alpha)
            if m is not None:
                m[0].details["headline"] = False
                out.append(m)
    for m, _ in [head, *out]:
        m.details.update(
            {
                "valid": reason is None,
                "invalid_reason": reason,
                "judgments": judgments,
                "unparsed_judgments": unparsed,
                "parse_failure_share": unparsed / judgments if judgments else None,
                "sanity": {k: sanity[k] for k in ("right", "n", "share")},
                "judge_note": judge_note,
            }
        )
    return [head, *out]


def disagreements(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """A few prompts where the two orders gave different verdicts (for the report)."""
    return [r for r in records if r["consistent"] is False][:k]


def summary_line(m: Metric) -> str:
    """One line for logs."""
    d = m.details
    return (
        f"{m.name}: {fmt(m.value)} [{fmt(m.ci_low)}, {fmt(m.ci_high)}] ({d.get('wins')}/{d.get('ties')}/"
        f"{d.get('losses')} w/t/l, n={m.n}){'' if d.get('valid') else ' INVALID: ' + str(d.get('invalid_reason'))}"
    )


def produced(settings: EvalConfig) -> list[MetricShape]:
    """The family's metrics (evals.families): judge/<set>/win_rate, and per category below it."""
    return [MetricShape(("judge", set_name(spec)), higher_is_better=True) for spec in settings.judge.prompt_sets]
