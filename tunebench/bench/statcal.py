"""``tunebench bench stats``: the statistics calibrated on CPU by simulation, JSON first, Markdown from it.

Three families of figures, each a share of simulated datasets with its Wilson interval and its seed
(``bench.statsim`` builds the data and calls the suite's own code):

- **false positives**: no true change; how often a row's verdict, and the gate (``min_improvement: 0`` passing or
  ``max_regression: 0`` failing), claim one. Independent and clustered pass/fail items at several intra-prompt
  correlations (beside the exact McNemar test over samples that the clustered test replaced), skewed scores,
  perplexity, judged win rates with and without a length-only judge.
- **coverage**: how often each interval method in use holds the true change, at n = 5, 10, 30 and 400, for a
  well-behaved and a skewed or lopsided case.
- **power at the reported MDE**: the row's MDE read off no-change datasets, then the share of datasets with a true
  change of that size that the verdict finds (80% by construction of the MDE).
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tunebench.bench import statsim as sim
from tunebench.bench.host import host_snapshot
from tunebench.compare.rows import IMPROVED
from tunebench.core import stats
from tunebench.core.io import atomic_write_json, atomic_write_text, git_commit, package_version
from tunebench.core.markdown import table
from tunebench.core.numbers import fmt

SCHEMA = "tunebench.bench.stats/1"
ICCS = (0.0, 0.1, 0.3, 0.5, 0.8)
COVERAGE_N = (5, 10, 30, 400)
NULL_CELLS = (0.35, 0.15, 0.15, 0.35)
"""P(both pass, base only, tuned only, neither) with no change."""
TARGETS = {"false_positive_rate": 0.06, "false_positive_upper": 0.075, "coverage_at_10": 0.93}


def _pct(f: dict[str, Any]) -> str:
    return (
        f"{fmt(100 * f['rate'], pattern='{:.1f}')}% [{fmt(100 * f['low'], pattern='{:.1f}')}, "
        + str(fmt(100 * f["high"], pattern="{:.1f}"))
        + "]"
    )


# ----------------------------------------------------------------------------- false positives


def _fp_specs(n_boot: int) -> list[tuple[str, str, Callable[[np.random.Generator, int], Any], bool]]:
    """(what, design, one dataset's row, whether it is a judged row) with no true change."""
    specs: list[tuple[str, str, Callable[[np.random.Generator, int], Any], bool]] = [
        ("pass/fail items", "30 items", lambda rng, k: sim.metric_row(sim.pass_fail(rng, 30, NULL_CELLS)), False),
        ("pass/fail items", "400 items", lambda rng, k: sim.metric_row(sim.pass_fail(rng, 400, NULL_CELLS)), False),
    ]
    for icc in ICCS:
        specs.append(
            (
                "pass/fail samples, clustered",
                f"30 prompts × 8 samples, ICC {icc:g}",
                lambda rng, k, icc=icc: sim.metric_row(sim.clustered_pass_fail(rng, 30, 8, icc)),
                False,
            )
        )
    for n in (10, 30):
        specs.append(
            (
                "mean score, skewed noise",
                f"{n} items",
                lambda rng, k, n=n: sim.metric_row(sim.mean_scores(rng, n, 0.0, "skewed"), n_boot=n_boot, seed=k),
                False,
            )
        )
    specs.append(
        (
            "perplexity, skewed NLL",
            "30 conversations",
            lambda rng, k: sim.metric_row(sim.perplexity_items(rng, 30, 0.0, "skewed")[0], "exp_ratio", n_boot, k),
            False,
        )
    )
    turns = [str(k // 2) for k in range(160)]
    specs += [
        (
            "judged win rate, no preference",
            "80 questions × 2 turns, turns alike half the time",
            lambda rng, k: sim.judged_metric_row(
                sim.judge_scores(rng, 80, (0.35, 0.3, 0.35), 0.5), *_lengths(rng, 160), turns
            ),
            True,
        ),
        (
            "judged win rate, length-only judge",
            "160 prompts, tuned 40 tokens longer on average, judge prefers the longer (slope 3)",
            lambda rng, k: sim.judged_metric_row(*sim.length_judged(rng, 160, 0.0, 3.0), [str(i) for i in range(160)]),
            True,
        ),
    ]
    return specs


def _lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    base = rng.integers(50, 150, size=n).astype(float)
    return base + rng.normal(40, 40, size=n), base


def false_positives(datasets: int, judged_datasets: int, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Each no-change design: the verdict's and the gate's false-positive shares, and where they differ."""
    out = []
    for k, (what, design, make_row, judged) in enumerate(_fp_specs(n_boot)):
        s = seed + 100 * k
        count = judged_datasets if judged else datasets
        verdict, gate, differ = sim.rejection_share(make_row, count, s)
        row = {"what": what, "design": design, "verdict": verdict, "gate": gate, "disagreements": differ}
        row["method"] = make_row(np.random.default_rng(s), 0).method
        if what.startswith("pass/fail samples"):
            icc = float(design.rsplit(" ", 1)[1])
            row["before"] = sim.naive_mcnemar_share(
                lambda rng, icc=icc: sim.clustered_pass_fail(rng, 30, 8, icc), count, s
            )
        out.append(row)
    return out


# ----------------------------------------------------------------------------- coverage


def _coverage_specs(n_boot: int) -> list[tuple[str, str, Callable[[np.random.Generator, int], tuple] | None]]:
    """(interval method, case, one dataset's (low, high, truth) at n units; None: not available here)."""
    return [
        ("paired studentized bootstrap: mean score", "normal noise", sim.boot_mean("normal", n_boot)),
        ("paired studentized bootstrap: mean score", "skewed noise (exponential)", sim.boot_mean("skewed", n_boot)),
        ("paired studentized bootstrap: perplexity change", "normal NLL", sim.boot_ppl("normal", True, n_boot)),
        ("paired studentized bootstrap: perplexity change", "skewed NLL (gamma)", sim.boot_ppl("skewed", True, n_boot)),
        (
            "paired studentized bootstrap: perplexity change",
            "stress: skewed NLL, tokens uncapped (a few conversations carry most tokens)",
            sim.boot_ppl("skewed", True, n_boot, capped=False),
        ),
        ("paired studentized bootstrap: perplexity change", "resampled from a published run", _published_ppl(n_boot)),
        ("studentized bootstrap: one model's perplexity", "normal NLL", sim.boot_ppl("normal", False, n_boot)),
        ("studentized bootstrap: one model's perplexity", "skewed NLL (gamma)", sim.boot_ppl("skewed", False, n_boot)),
        (
            "Tango matched pairs: pass/fail change",
            "balanced (0.35/0.10/0.20/0.35)",
            sim.tango_case((0.35, 0.10, 0.20, 0.35)),
        ),
        (
            "Tango matched pairs: pass/fail change",
            "near 100% (0.85/0.02/0.08/0.05)",
            sim.tango_case((0.85, 0.02, 0.08, 0.05)),
        ),
        ("Tango + Rao-Scott: prompts × 4 samples, ICC 0.3", "pass rate 0.5 -> 0.6", sim.clustered_case(0.5, 0.6)),
        ("Tango + Rao-Scott: prompts × 4 samples, ICC 0.3", "pass rate 0.85 -> 0.9", sim.clustered_case(0.85, 0.9)),
        ("win rate (Tango on wins/ties/losses)", "0.45 / 0.20 / 0.35", sim.win_case(0.45, 0.20, 0.35)),
        ("win rate (Tango on wins/ties/losses)", "lopsided 0.80 / 0.15 / 0.05", sim.win_case(0.80, 0.15, 0.05)),
        ("length-controlled win rate (Firth, profile)", "0.7, no length effect", sim.lc_case(0.7, 0.0)),
        (
            "length-controlled win rate (Firth, profile)",
            "0.6, judge also prefers length (slope 2)",
            sim.lc_case(0.6, 2.0),
        ),
        ("Wilson: one model's pass rate", "p = 0.5", sim.wilson_case(0.5)),
        ("Wilson: one model's pass rate", "p = 0.9", sim.wilson_case(0.9)),
        ("Welch t: no per-item records", "normal", sim.welch_case("normal")),
        ("Welch t: no per-item records", "skewed (exponential)", sim.welch_case("skewed")),
    ]


PUBLISHED_RUN = Path(__file__).resolve().parents[2] / "reports/published/2026-12-01-h200-smollm2-standard-limit100"
"""A published SmolLM2 run whose 365 test conversations (base and tuned per-conversation NLL and tokens) serve as a
population: n of them are drawn with replacement, and the truth is the whole set's change of perplexity."""


def _published_ppl(n_boot: int) -> Callable[[np.random.Generator, int], tuple] | None:
    """Coverage on real perplexity items, when this checkout has the published run (else None: the row is left out)."""
    from tunebench.evals.results import Results

    paths = [PUBLISHED_RUN / "eval" / side / "results.json" for side in ("base", "tuned")]
    if not all(p.is_file() for p in paths):
        return None
    base, tuned = (Results.load(p) for p in paths)
    key = next(m.items for m in base.metrics if m.name == "perplexity/test")
    t_by_id = {i["id"]: i for i in tuned.items[key]}
    cols = np.array([[i["num"], i["den"], t_by_id[i["id"]]["num"]] for i in base.items[key]])
    truth = math.exp(cols[:, 2].sum() / cols[:, 1].sum()) - math.exp(cols[:, 0].sum() / cols[:, 1].sum())

    def one(rng: np.random.Generator, n: int) -> tuple:
        draw = cols[rng.integers(0, len(cols), size=n)]
        pairs = sim.records(draw[:, 0], draw[:, 2], draw[:, 1])
        pr = stats.paired_bootstrap(*pairs, "exp_ratio", n_boot, sim.ALPHA, sim.bootstrap_seed(rng))
        return pr.low, pr.high, truth

    return one


def coverage(datasets: int, slow_datasets: int, n_boot: int, seed: int, sizes=COVERAGE_N) -> list[dict[str, Any]]:
    """Each interval method and case: coverage of the truth at every n (fewer datasets for the Firth fits at n 400
    and the bootstrap at n 400: ``slow_datasets``)."""
    out = []
    for k, (method, case, one) in enumerate(_coverage_specs(n_boot)):
        if one is None:
            continue
        cells = {}
        for j, n in enumerate(sizes):
            slow = "Firth" in method or (n >= 400 and "bootstrap" in method)
            cells[str(n)] = sim.covered(
                lambda rng, n=n, one=one: one(rng, n), slow_datasets if slow else datasets, seed + 100 * k + j
            )
        out.append(
            {
                "method": method,
                "case": case,
                "coverage": cells,
                "stress": case.startswith("stress"),
                "display": "one model's" in method,  # a value's own interval, read by no verdict nor gate
            }
        )
    return out


# ----------------------------------------------------------------------------- power at the MDE


def _power_specs(n_boot: int) -> list[tuple[str, Callable[[np.random.Generator, float, int], Any]]]:
    """(design, a dataset's row with a true improvement of e)."""
    turns = [str(i) for i in range(160)]
    return [
        (
            "mean score, normal noise, 30 items",
            lambda rng, e, k: sim.metric_row(sim.mean_scores(rng, 30, e, "normal"), n_boot=n_boot, seed=k),
        ),
        (
            "pass/fail items, 100 items",
            lambda rng, e, k: sim.metric_row(sim.pass_fail(rng, 100, (0.35, 0.15 - e / 2, 0.15 + e / 2, 0.35))),
        ),
        (
            "pass/fail samples, 30 prompts × 8 samples, ICC 0.3",
            lambda rng, e, k: sim.metric_row(sim.clustered_pass_fail(rng, 30, 8, 0.3, 0.5, 0.5 + e)),
        ),
        (
            "judged win rate (length-controlled), 160 prompts, no length effect",
            lambda rng, e, k: sim.judged_metric_row(
                *sim.length_judged(rng, 160, math.log((0.5 + e) / (0.5 - e)), 0.0), turns
            ),
        ),
    ]


def power(datasets: int, pilot: int, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """The median MDE the rows report with no change (``pilot`` datasets), then the share of datasets with a true
    improvement of that size whose verdict reads "improved"."""
    out = []
    for k, (design, make) in enumerate(_power_specs(n_boot)):
        s = seed + 100 * k
        rng = np.random.default_rng(s)
        mde = float(np.median([make(rng, 0.0, i).mde for i in range(pilot)]))
        rng = np.random.default_rng(s + 1)
        hits = sum(make(rng, mde, i).verdict == IMPROVED for i in range(datasets))
        out.append({"design": design, "mde": mde, "pilot": pilot, "power": sim.figure(hits, datasets, s + 1)})
    return out


# ----------------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure, with the host, versions, commit and settings that produced it."""
    started = time.time()
    before = host_snapshot()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "tunebench bench " + " ".join(args.argv),
        "environment": {
            "python": platform.python_version(),
            "numpy": package_version("numpy"),
            "scipy": package_version("scipy"),
            "tunebench_commit": git_commit(),
        },
        "settings": {
            "alpha": sim.ALPHA,
            "n_boot": args.n_boot,
            "datasets": args.datasets,
            "slow_datasets": args.slow_datasets,
            "seed": args.seed,
            "min_n": "2 (the rows' own flag is off: the methods themselves are calibrated)",
        },
        "targets": TARGETS,
        "false_positives": false_positives(args.datasets, args.slow_datasets, args.n_boot, args.seed),
        "coverage": coverage(args.datasets, args.slow_datasets, args.n_boot, args.seed + 10_000),
        "power": power(args.slow_datasets, 100, args.n_boot, args.seed + 20_000),
    }
    results["host"] = {"before": before, "after": host_snapshot()}
    results["seconds"] = round(time.time() - started, 1)
    results["checks"] = checks(results)
    return results


def checks(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 35's targets against the figures: clustered false positives at ICC 0.5, and coverage at n = 10."""
    fp = next(r for r in results["false_positives"] if r["design"] == "30 prompts × 8 samples, ICC 0.5")
    fp_ok = all(
        fp[k]["rate"] <= TARGETS["false_positive_rate"] and fp[k]["high"] <= TARGETS["false_positive_upper"]
        for k in ("verdict", "gate")
    )

    def lowest(display: bool) -> list[Any] | None:
        at10 = [
            [r["method"], r["case"], r["coverage"]["10"]["rate"]]
            for r in results["coverage"]
            if "10" in r["coverage"] and not r.get("stress") and r.get("display", False) == display
        ]
        return min(at10, key=lambda x: x[2]) if at10 else None

    worst = lowest(False)
    return {
        "clustered_false_positives_met": fp_ok,
        "verdict_gate_disagreements": sum(r["disagreements"] for r in results["false_positives"]),
        "coverage_at_10_min": worst,
        "coverage_at_10_met": worst is not None and worst[2] >= TARGETS["coverage_at_10"],
        "display_coverage_at_10_min": lowest(True),
    }


def render_md(results: dict[str, Any]) -> str:
    """stats.md from stats.json: every figure with its interval and seed, through ``core.markdown``."""
    env, s, host = results["environment"], results["settings"], (results.get("host") or {}).get("before") or {}
    lines = [
        "# Statistics calibration (`tunebench bench stats`)",
        "",
        f"- host: {host.get('cpu')} × {host.get('cpu_count')} logical CPUs (`{host.get('hostname')}`), no GPU used; "
        f"{fmt(results.get('seconds'), pattern='{:.0f}')} s",
        f"- versions: Python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}; tunebench commit "
        f"`{env['tunebench_commit']}`",
        f"- settings: α = {s['alpha']}, {s['n_boot']} bootstrap resamples, {s['datasets']} datasets per figure "
        f"({s['slow_datasets']} for the judged rows, the length-controlled fits and the n = 400 bootstrap), "
        f"base seed {s['seed']}",
        f"- command: `{results['command']}`; created {results['created']}",
        "- each figure: share of simulated datasets, 95% Wilson interval in brackets, and the seed that reproduces it",
        "",
        "## False positives with no true change",
        "",
        "The verdict claims a change when it reads improved or regressed; the gate, when `min_improvement: 0` passes"
        ' or `max_regression: 0` fails. "Before": the exact McNemar test over every sample, clusters ignored.',
        "",
    ]
    fp_rows = [
        [
            r["what"],
            r["design"],
            _pct(r["verdict"]),
            _pct(r["gate"]),
            r["disagreements"],
            _pct(r["before"]) if "before" in r else "–",
            r["verdict"]["seed"],
        ]
        for r in results["false_positives"]
    ]
    lines += [table(fp_rows, ["Metric", "Design", "Verdict", "Gate", "Verdict ≠ gate", "Before", "Seed"]), ""]
    lines += ["## Coverage of the 95% intervals", ""]
    sizes = list(results["coverage"][0]["coverage"]) if results["coverage"] else []
    cov_rows = [
        [
            r["method"],
            r["case"],
            *(_pct(r["coverage"][n]) for n in sizes),
            ", ".join(str(r["coverage"][n]["seed"]) for n in sizes),
        ]
        for r in results["coverage"]
    ]
    lines += [table(cov_rows, ["Interval", "Case", *(f"n = {n}" for n in sizes), "Seeds"]), ""]
    lines += ["## Power at the reported MDE (target 80%)", ""]
    pw_rows = [[r["design"], r["mde"], _pct(r["power"]), r["power"]["seed"]] for r in results["power"]]
    lines += [table(pw_rows, ["Design", "Median reported MDE", "Power", "Seed"]), ""]
    c = results["checks"]
    lines += [
        "## Checks (issue 35)",
        "",
        f"- clustered pass/fail, 30 prompts × 8 samples, ICC 0.5: false positives ≤ 6% with the upper bound ≤ 7.5%, "
        f"verdict and gate: **{'met' if c['clustered_false_positives_met'] else 'not met'}**",
        f"- datasets where the verdict and the gate disagree about a change: {c['verdict_gate_disagreements']}",
        f"- lowest coverage at n = 10 of an interval a verdict or the gate reads: {_share(c['coverage_at_10_min'])}: "
        f"**{'met' if c['coverage_at_10_met'] else 'not met'}** (target ≥ 93%; stress cases apart)",
        "- lowest coverage at n = 10 of a single model's interval (shown beside its value, read by no decision): "
        + _share(c.get("display_coverage_at_10_min")),
        "",
    ]
    return "\n".join(lines)


def _share(worst: list[Any] | None) -> str:
    return "none" if not worst else f"{fmt(100 * worst[2], pattern='{:.1f}')}% ({worst[0]}, {worst[1]})"


def run_bench_stats(args: argparse.Namespace) -> int:
    """Run, then write stats.json and stats.md into ``args.out``; print the Markdown."""
    for key in ("datasets", "slow_datasets", "n_boot"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} {getattr(args, key)}: give at least 1")
    if 2 / (args.n_boot + 1) >= sim.ALPHA:
        raise ValueError(f"--n-boot {args.n_boot}: give at least {math.ceil(2 / sim.ALPHA)} (p must reach below 0.05)")
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "stats.json", results)
    text = render_md(results)
    atomic_write_text(out / "stats.md", text)
    print(text)
    print(f"wrote {out / 'stats.json'} and {out / 'stats.md'}")
    return 0
