"""Evaluation families are registrations (evals.families): a family registered through the public API, with no
other edit, is produced for preflight, has its own section in the report and is judged by the gate; the built-in
families' declarations agree with the metrics their code writes."""

from __future__ import annotations

import json

import pytest
import synthetic  # tests/fixtures/synthetic.py (on sys.path via conftest)

from tunebench.app.preflight import preflight
from tunebench.compare.comparison import compare
from tunebench.core.config import load_config
from tunebench.core.config_schema import EvalConfig
from tunebench.core.errors import GateError
from tunebench.core.runtimes import LLAMA_CPP, TRANSFORMERS
from tunebench.evals.families import (
    Family,
    MetricShape,
    Section,
    artifact_metrics,
    families,
    produced_metrics,
    register,
    unregister,
)
from tunebench.evals.llamacpp import PARITY_METRICS
from tunebench.evals.results import Metric
from tunebench.gate.verdict import evaluate_gate
from tunebench.reports.render import render_report

TOY = Family(
    "toy",
    lambda settings: [MetricShape(("toy", "score"), open=False, higher_is_better=True)],
    section=Section("Toy family", "A toy measurement (higher is better)."),
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def _with_toy(shift: float):
    """The synthetic pair, each side with toy/score over 60 items, the tuned side ``shift`` higher."""
    base, tuned = synthetic.make_pair("improved")
    for res, d in ((base, 0.0), (tuned, shift)):
        noise = [((i * 7) % 5) / 100 * (d != 0) for i in range(60)]  # a paired difference that varies
        items = [{"id": f"t{i}", "num": (i % 10) / 10 + d + noise[i], "den": 1} for i in range(60)]
        value = sum(i["num"] for i in items) / len(items)
        res.add(Metric("toy/score", value, True, n=60, group="toy", ci_low=value - 0.05, ci_high=value + 0.05), items)
    return base, tuned


def _rules(tmp_path, metric):
    p = tmp_path / "rules.yaml"
    p.write_text(json.dumps({"rules": [{"metric": metric, "max_regression": 0.05}]}))
    return str(p)


def test_a_registered_family_is_known_to_preflight(tmp_path, toy):
    cfg = load_config("smoke", [f"gate.rules={_rules(tmp_path, 'toy/score')}"])
    assert MetricShape(("toy", "score"), open=False, higher_is_better=True) in produced_metrics(cfg.eval)
    preflight(cfg)
    unregister(toy.name)
    try:
        with pytest.raises(GateError, match="toy/score"):
            preflight(cfg)
    finally:
        register(toy)


def test_a_registered_family_has_its_report_section_and_a_gate_rule_on_it_concludes(toy):
    base, tuned = _with_toy(0.2)
    comparison = compare(base, tuned, n_boot=300)
    text = render_report(comparison)
    section = text[text.index("## Toy family") :]
    assert section.startswith("## Toy family\n\nA toy measurement (higher is better).\n\n|")
    assert "`toy/score`" in section.split("\n## ")[0]
    assert "## Other metrics" not in text
    verdict = evaluate_gate(comparison, [{"metric": "toy/score", "max_regression": 0.05}])
    assert [(r.metric, r.status) for r in verdict.rows] == [("toy/score", "pass")]
    regressed = evaluate_gate(compare(*_with_toy(-0.3), n_boot=300), [{"metric": "toy/score", "max_regression": 0.05}])
    assert regressed.rows[0].status == "fail"


def test_without_the_registration_its_rows_fall_under_other_metrics():
    text = render_report(compare(*_with_toy(0.2), n_boot=300))
    assert "## Toy family" not in text and "`toy/score`" in text[text.index("## Other metrics") :]


def test_a_family_name_is_registered_once(toy):
    with pytest.raises(ValueError, match="registered already"):
        register(toy)
    with pytest.raises(KeyError, match="known: perplexity"):
        unregister("no-such-family")


def test_built_in_families_declare_what_their_code_writes():
    assert [f.name for f in families()] == ["perplexity", "probes", "lm_eval", "judge", "parity", "contamination"]
    settings = EvalConfig()
    shapes = {s.text(): s for s in produced_metrics(settings)}
    assert shapes["perplexity/test"].higher_is_better is False
    assert shapes["probes/default/seed/..."].higher_is_better is True
    assert "lm_eval/tunebench_facts_mc/..." in shapes and "judge/mt_bench/..." not in shapes  # the judge is off
    assert not artifact_metrics(settings, TRANSFORMERS)
    parity = artifact_metrics(settings, LLAMA_CPP)
    assert ["/".join(s.segments) for s in parity] == list(PARITY_METRICS)
    assert [s.higher_is_better for s in parity] == [False, False, True, False]  # evals.parity.parity_metrics
    assert not produced_metrics(EvalConfig(perplexity=False, probe_files=[], lm_eval_tasks=[]))
