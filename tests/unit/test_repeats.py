"""Repeated benchmark bookkeeping (issue 28): interleaving, paired per-repeat ratios, intervals over repeats, verdicts
from the interval's conservative end, and rows cut short that must not feed a ratio or a target."""

from __future__ import annotations

import pytest

from tunebench.bench.markdown import write_speed
from tunebench.bench.metrics import repeated_speed_targets, speed_ratios
from tunebench.bench.repeats import interleave, mark_cut_short, median_interval, ratio_summaries, verdict


def _row(backend, repeat, tok_s, mem, steps=40, tokens=1000, **kw):
    return {
        "status": "ok",
        "shape": "s",
        "backend": backend,
        "point": 0,
        "repeat": repeat,
        "batch_size": 2,
        "grad_accum": 4,
        "asked_steps": 40,
        "measured_steps": steps,
        "real_tokens": tokens,
        "real_tokens_per_s": tok_s,
        "peak_allocated_gib": mem,
        "mfu": tok_s / 1e5,
        "positions_per_s": tok_s,
        "step_s_median": 1.0,
        "step_s_p10": 0.9,
        "step_s_p90": 1.1,
        **kw,
    }


def test_interleave_runs_every_job_once_per_repeat_in_turn():
    assert interleave(["unsloth", "hf"], 3) == [
        (0, "unsloth"),
        (0, "hf"),
        (1, "unsloth"),
        (1, "hf"),
        (2, "unsloth"),
        (2, "hf"),
    ]
    with pytest.raises(ValueError):
        interleave(["a"], 0)


def test_median_interval_and_verdicts():
    s = median_interval([1.9, 2.0, 1.62])
    assert s["median"] == 1.9 and (s["min"], s["max"]) == (1.62, 2.0)
    lo, hi = s["ci"]
    assert 1.62 <= lo <= 1.9 <= hi <= 2.0
    assert median_interval([2.0])["ci"] is None  # one run: no interval
    assert verdict([1.85, 2.1], 1.8, True) == "met"
    assert verdict([1.6, 2.1], 1.8, True) == "inconclusive"
    assert verdict([1.5, 1.7], 1.8, True) == "not met"
    assert verdict([0.50, 0.53], 0.55, False) == "met"
    assert verdict([0.52, 0.58], 0.55, False) == "inconclusive"
    assert verdict(None, 1.8, True) == "inconclusive"


def test_ratios_pair_within_a_repeat_and_the_target_uses_the_conservative_end():
    rows = []
    for k, (u, h) in enumerate([(13982, 8646), (9778, 4939), (11289, 5643)]):
        rows += [_row("unsloth", k, u, 1.58), _row("hf", k, h, 3.05)]
    ratios = speed_ratios(rows)
    assert sorted(q["real_tokens_per_s_ratio"] for q in ratios) == [1.617, 1.98, 2.001]
    (summary,) = ratio_summaries(ratios)
    assert summary["real_tokens_per_s_ratio"]["median"] == 1.98 and summary["real_tokens_per_s_ratio"]["repeats"] == 3
    by = {t["target"].split()[1]: t for t in repeated_speed_targets(rows, ["s"])}
    tok = by["real"]
    assert (
        tok["value"] == pytest.approx(1.98, abs=1e-3)
        and tok["repeats"] == 3
        and tok["values"] == [1.6172, 1.9798, 2.0005]
    )
    # the interval reaches down to the 1.62 repeat: 1.8 is straddled, so no claim either way
    assert tok["verdict"] == "inconclusive" and tok["met"] is None and tok["margin"] < 0
    assert by["peak"]["verdict"] == "met"  # 0.52 in every repeat


def test_a_row_cut_short_feeds_no_ratio_and_no_target(tmp_path):
    rows = [
        _row("unsloth", 0, 20000, 1.5),
        _row("hf", 0, 10000, 3.0),
        _row("unsloth", 1, 30000, 1.5, steps=33),
        _row("hf", 1, 10000, 3.0),  # cut by the budget
        _row("unsloth", 2, 20500, 1.5),
        _row("hf", 2, 10000, 3.0, tokens=999),
    ]  # not the same batches
    mark_cut_short(rows, lambda r: r["asked_steps"])
    assert rows[2]["cut_short"] == "cut short: 33 of 40 measured steps" and "cut_short" not in rows[0]
    ratios = speed_ratios(rows)
    excluded = {q["repeat"]: q["excluded"] for q in ratios}
    assert excluded[0] is None and excluded[1].startswith("cut short") and excluded[2].startswith("not the same")
    (summary,) = ratio_summaries(ratios)
    assert summary["real_tokens_per_s_ratio"]["repeats"] == 1 and summary["real_tokens_per_s_ratio"]["median"] == 2.0
    tok = next(t for t in repeated_speed_targets(rows, ["s"]) if "real tokens/s ÷ hf" in t["target"])
    assert tok["values"] == [2.0] and tok["repeats"] == 1 and tok["verdict"] == "inconclusive"
    mfu = next(t for t in repeated_speed_targets(rows, ["s"]) if "MFU" in t["target"])
    assert 0.3 not in mfu["values"]  # the cut-short row's 30,000 tok/s never becomes the best MFU
    res = {"settings": {"repeats": 3}, "shapes": {"s": {"params": 1}}, "rows": rows}
    write_speed(res, tmp_path)
    md = (tmp_path / "speed.md").read_text()
    assert "**cut short: 33 of 40 measured steps** (feeds no ratio or target)" in md
    assert "no: not the same batches" in md


@pytest.mark.slow  # lm-eval runs a stock task twice
def test_lm_eval_loglikelihood_part_times_both_runners_and_compares_their_metrics(tiny_llama_dir):
    """bench eval --parts lm-eval-ll on CPU: HFLM and the suite's model class score the same packaged ARC-Easy
    documents with equal metrics; the order flips with the repeat; the target reads the ratio of wall times."""
    from tunebench.bench.evalcompare import lm_eval_loglikelihood_rows
    from tunebench.bench.evaltargets import eval_targets
    from tunebench.evals.modeling import load_for_eval
    from tunebench.models.loading import resolve_model

    loaded = load_for_eval(resolve_model(str(tiny_llama_dir)), device="cpu", dtype="float32")
    rows = lm_eval_loglikelihood_rows(loaded, ["arc_easy"], 8, 6, repeat=1)
    assert [r["runner"] for r in rows] == ["tunebench", "lm-eval HFLM"]  # odd repeat: the suite first
    assert all(r["documents"] == 6 and r["seconds"] > 0 and r["same_metric_names"] for r in rows)
    assert rows[0]["max_metric_difference"] < 1e-6 and "arc_easy/acc,none" in rows[0]["metrics"]
    (t,) = [t for t in eval_targets([dict(r, shape="s") for r in rows], ["s"], 64) if "loglikelihood" in t["target"]]
    assert t["value"] == pytest.approx(rows[1]["seconds"] / rows[0]["seconds"], abs=1e-3)


@pytest.mark.slow  # lm-eval runs a stock task six times
def test_repeats_in_worker_run_every_lm_eval_repeat_on_one_loaded_model(tmp_path, tiny_llama_dir):
    """--repeats-in-worker: one eval worker runs every lm-eval-ll repeat, each tagged with its own repeat and with
    the runners' order flipping, so the targets pair them as if each repeat had its own worker."""
    from tunebench.bench.evaltargets import eval_targets
    from tunebench.bench.evalworker import run_eval_shape
    from tunebench.bench.prepared import prepare_data
    from tunebench.bench.repeats import aggregate_targets

    prepared, _, _ = prepare_data(str(tiny_llama_dir), "auto", "packaged:sharegpt-v3", 256, 8, tmp_path)
    spec = {
        "kind": "eval",
        "label": "cpu",
        "shape": "s",
        "model_dir": str(tiny_llama_dir),
        "chat_template": "auto",
        "prepared": str(prepared),
        "ppl_batch_tokens": [],
        "ppl_conversations": 2,
        "gen_batch": 2,
        "gen_batches": 1,
        "prompt_tokens": 48,
        "new_tokens": 4,
        "parts": ["lm-eval-ll"],
        "lm_eval_ll_tasks": ["arc_easy"],
        "lm_eval_ll_batch": 8,
        "lm_eval_ll_limit": 4,
        "repeat": 0,
        "inner_repeats": 3,
        "partial": str(tmp_path / "partial.json"),
        "r": 4,
        "alpha": 8,
        "targets": ["q_proj", "v_proj"],
    }
    rows = [dict(r, shape="s") for r in run_eval_shape(spec)["rows"]]
    assert [(r["repeat"], r["runner"]) for r in rows] == [
        (0, "lm-eval HFLM"),
        (0, "tunebench"),
        (1, "tunebench"),
        (1, "lm-eval HFLM"),
        (2, "lm-eval HFLM"),
        (2, "tunebench"),
    ]
    (t,) = [t for t in aggregate_targets(rows, lambda rs: eval_targets(rs, ["s"], 2)) if "loglikelihood" in t["target"]]
    assert t["repeats"] == 3 and len(t["values"]) == 3 and t["ci"] is not None


def test_repeats_in_worker_refuses_parts_that_change_the_model(capsys, tmp_path):
    from tunebench.bench.cli import main

    code = main(["eval", "--parts", "lm-eval-ll,generation", "--repeats-in-worker", "--out", str(tmp_path)])
    assert code == 2 and "--repeats-in-worker runs only with --parts lm-eval-ll" in capsys.readouterr().err
