"""`tunebench compare --lm-eval A B`: a paired decision on two runs of lm-eval's own CLI (``--log_samples``).

lm-eval reports each run's score with its own stderr; two runs on the same documents compared that way are treated
as independent samples, which throws away the pairing (the same question answered by both models). This reads both
runs' per-document scores (``evals.lm_eval.files``), refuses runs of other tasks or documents, and hands them to
the comparison, report and gate that decide tunebench's own runs: rows with paired bootstrap intervals of B - A,
p-values, verdicts and detectable effects, the report, and the gate's verdict (shipped rules ``lm_eval`` unless
``--rules``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunebench.compare.comparison import Comparison, compare
from tunebench.core.io import atomic_write_json, atomic_write_text
from tunebench.evals.lm_eval.files import check_same_documents, read_lm_eval_run
from tunebench.gate.verdict import GateVerdict, evaluate_gate, format_verdict
from tunebench.reports.render import render_report
from tunebench.reports.render_tables import metric_table

DEFAULT_RULES = "lm_eval"
"""The shipped gate of lm-eval-only comparisons (configs/gates/lm_eval.yaml)."""


@dataclass
class LmEvalComparison:
    """Two lm-eval runs compared: the comparison, the gate's verdict, and the text printed."""

    comparison: Comparison
    verdict: GateVerdict
    text: str


def compare_lm_eval(
    a: str | Path,
    b: str | Path,
    out: str | Path | None = None,
    rules: str | None = None,
    alpha: float = 0.05,
    n_boot: int = 2000,
) -> LmEvalComparison:
    """B against A, paired by document; with ``out``, writes comparison.json, gate.json and report.md there.

    Args:
        a: lm-eval's output of the reference run (``base`` in the rows): its --output_path folder, the model folder
            in it, or its results_*.json.
        b: the run compared with it (``tuned``; delta = B - A).
        rules: a rules file or shipped gate name (default ``lm_eval``).

    Raises:
        MissingRunFile, RunFileError: a folder without lm-eval's results and samples, or a file that is not lm-eval's.
        ComparisonError: runs of other tasks, documents or targets.
        GateError: invalid rules.
    """
    run_a, run_b = read_lm_eval_run(a, "base"), read_lm_eval_run(b, "tuned")
    check_same_documents(run_a, run_b)
    comparison = compare(run_a.results, run_b.results, alpha, n_boot, same_base=False)
    verdict = evaluate_gate(comparison, rules or DEFAULT_RULES)
    n = {len(docs) for docs in run_a.documents.values()}
    head = (
        f"A (base): {run_a.path} ({run_a.results.model.get('model_args') or run_a.results.model.get('model')})\n"
        f"B (tuned): {run_b.path} ({run_b.results.model.get('model_args') or run_b.results.model.get('model')})\n"
        f"Δ = B − A, paired by doc_id over {'/'.join(str(k) for k in sorted(n))} documents per task"
    )
    text = "\n\n".join([head, metric_table(comparison.rows, alpha, detailed=False), format_verdict(verdict)])
    if out is not None:
        folder = Path(out)
        atomic_write_json(folder / "comparison.json", comparison.to_dict())
        atomic_write_json(folder / "gate.json", verdict.to_dict())
        context = {
            "name": f"{Path(a).name} vs {Path(b).name} (lm-eval)",
            "base_artifacts": run_a.results.artifacts,
            "tuned_artifacts": run_b.results.artifacts,
            "gate": verdict.to_dict(),
        }
        atomic_write_text(folder / "report.md", render_report(comparison, context))
        text += f"\n\nwrote {folder / 'report.md'}, {folder / 'comparison.json'}, {folder / 'gate.json'}"
    return LmEvalComparison(comparison, verdict, text)
