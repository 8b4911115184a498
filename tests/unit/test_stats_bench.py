"""`tunebench bench stats` in small, fixed-seed form: the calibration's rates within bounds, and its JSON and
Markdown. The published figures (reports/published/2026-12-06-cpu-stats-calibration.*) come from the full run."""

from __future__ import annotations

import json

import numpy as np

from tunebench.bench import statcal
from tunebench.bench import statsim as sim
from tunebench.bench.cli import main as bench_main


def test_clustered_no_change_keeps_its_false_positives_and_the_gate_agrees():
    """30 prompts x 8 samples, ICC 0.5, no change: the clustered test (verdict and gate alike) stays near 5%, where
    the exact McNemar test over samples (before issue 35) calls a quarter of the datasets significant."""
    row = lambda rng, k: sim.metric_row(sim.clustered_pass_fail(rng, 30, 8, 0.5))  # noqa: E731
    verdict, gate, differ = sim.rejection_share(row, 400, seed=7)
    assert differ == 0 and verdict == gate
    assert verdict["rate"] <= 0.08 and verdict["datasets"] == 400 and verdict["seed"] == 7
    before = sim.naive_mcnemar_share(lambda rng: sim.clustered_pass_fail(rng, 30, 8, 0.5), 400, seed=7)
    assert before["rate"] >= 0.18 and before["low"] > verdict["high"]


def test_independent_no_change_and_the_length_only_judge():
    verdict, gate, differ = sim.rejection_share(
        lambda rng, k: sim.metric_row(sim.pass_fail(rng, 30, statcal.NULL_CELLS)), 400, seed=3
    )
    assert differ == 0 and verdict["rate"] <= 0.08
    judged = lambda rng, k: sim.judged_metric_row(  # noqa: E731
        *sim.length_judged(rng, 80, 0.0, 3.0), [str(i) for i in range(80)]
    )
    verdict, gate, differ = sim.rejection_share(judged, 30, seed=4)  # a length-only judge: the raw rate reads ~0.8
    assert differ == 0 and verdict["rate"] <= 0.15


def test_intervals_cover_at_n_10():
    specs = {(m, c): f for m, c, f in statcal._coverage_specs(499)}
    cases = [
        ("Tango matched pairs: pass/fail change", "near 100% (0.85/0.02/0.08/0.05)", 400, 0.92),
        ("Tango + Rao-Scott: prompts × 4 samples, ICC 0.3", "pass rate 0.5 -> 0.6", 400, 0.92),
        ("win rate (Tango on wins/ties/losses)", "lopsided 0.80 / 0.15 / 0.05", 400, 0.92),
        ("paired studentized bootstrap: mean score", "skewed noise (exponential)", 150, 0.89),
        ("paired studentized bootstrap: perplexity change", "skewed NLL (gamma)", 150, 0.89),
        ("length-controlled win rate (Firth, profile)", "0.6, judge also prefers length (slope 2)", 40, 0.85),
    ]
    for method, case, datasets, floor in cases:
        f = sim.covered(lambda rng, one=specs[(method, case)]: one(rng, 10), datasets, seed=11)
        assert f["rate"] >= floor, (method, case, f)


def test_power_at_the_reported_mde_is_near_80_percent():
    (row,) = [r for r in statcal.power(150, 40, 499, seed=5) if r["design"].startswith("pass/fail items")] or [None]
    assert row is not None and 0.65 <= row["power"]["rate"] <= 0.95 and 0.05 < row["mde"] < 0.3


def test_the_command_writes_json_then_markdown_from_it(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["stats", "--datasets", "3", "--slow-datasets", "2", "--n-boot", "99", "--seed", "1", "--out", str(out)]
    assert bench_main(argv) == 0
    results = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert results["schema"] == statcal.SCHEMA and results["settings"]["datasets"] == 3
    assert {"false_positives", "coverage", "power", "checks", "host", "environment"} <= set(results)
    assert all({"rate", "low", "high", "seed", "datasets"} <= set(r["verdict"]) for r in results["false_positives"])
    assert sorted(results["coverage"][0]["coverage"]) == sorted(str(n) for n in statcal.COVERAGE_N)
    text = (out / "stats.md").read_text(encoding="utf-8")
    assert text == statcal.render_md(results) and "## Coverage of the 95% intervals" in text
    assert bench_main(["stats", "--n-boot", "10", "--out", str(tmp_path / "x")]) == 2  # p could never reach 0.05
    assert "--n-boot 10" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert np.isfinite(results["seconds"])
