"""`tunebench compare --lm-eval A B` without a model: files written the way lm-eval 0.4.13's EvaluationTracker
writes them (results_<date>.json in OUT/<model>/, samples_<task>_<date>.jsonl beside it) are read, paired by
doc_id, compared and gated; other tasks or documents, and files that are not lm-eval's, are refused with exit 2.
The same on lm-eval's real CLI output, against tunebench's own evaluation: tests/integration/test_lm_eval_files.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunebench.app import cli
from tunebench.evals.lm_eval.files import find_results, read_lm_eval_run

DATE = "2026-01-05T10-11-12.123456"


def write_run(out: Path, accs: list[float], model: str = "m", hashes: list[str] | None = None) -> Path:
    """One lm-eval run of a multiple-choice task ``toy`` whose document i scores ``accs[i]``."""
    folder = out / model
    folder.mkdir(parents=True)
    n = len(accs)
    mean = sum(accs) / n
    stderr = math.sqrt(sum((x - mean) ** 2 for x in accs) / (n - 1)) / math.sqrt(n)
    results = {
        "results": {"toy": {"alias": "toy", "acc,none": mean, "acc_stderr,none": stderr}},
        "group_subtasks": {},
        "configs": {
            "toy": {
                "task": "toy",
                "output_type": "multiple_choice",
                "num_fewshot": 0,
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 1.0, "pretrained": model},
            }
        },
        "versions": {"toy": 1.0},
        "n-shot": {"toy": 0},
        "higher_is_better": {"toy": {"acc": True}},
        "n-samples": {"toy": {"original": 100, "effective": n}},
        "config": {"model": "hf", "model_args": f"pretrained={model}", "limit": n},
        "model_name": model,
        "chat_template": None,
        "lm_eval_version": "0.4.13",
    }
    (folder / f"results_{DATE}.json").write_text(json.dumps(results))
    with open(folder / f"samples_toy_{DATE}.jsonl", "w") as f:
        for i, acc in enumerate(accs):
            sample = {
                "doc_id": i,
                "doc": {"q": f"question {i}"},
                "target": "0",
                "arguments": {"gen_args_0": {"arg_0": "Q", "arg_1": " A"}},
                "resps": [[["-1.5", "False"]], [["-2.0", "False"]]],
                "filtered_resps": [["-1.5", "False"], ["-2.0", "False"]],
                "filter": "none",
                "metrics": ["acc"],
                "doc_hash": (hashes or [f"doc{k}" for k in range(n)])[i],
                "prompt_hash": "p",
                "target_hash": "t",
                "acc": acc,
            }
            f.write(json.dumps(sample) + "\n")
    return out


def test_two_runs_pair_by_document_into_rows_report_and_gate(tmp_path, capsys):
    a = write_run(tmp_path / "a", [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0] * 5, model="base")
    b = write_run(tmp_path / "b", [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0] * 5, model="lora")
    run = read_lm_eval_run(a, "base")
    m = run.results.metric("lm_eval/toy/acc")
    assert m.value == 0.625 and m.n == 40 and m.items == "lm_eval/toy/acc"
    assert [i["id"] for i in run.results.items[m.items]] == [str(k) for k in range(40)]
    assert (
        run.results.inputs["lm_eval/toy"]["docs"] == read_lm_eval_run(b, "tuned").results.inputs["lm_eval/toy"]["docs"]
    )
    code = cli.main(["compare", "--lm-eval", str(a), str(b), "--out", str(tmp_path / "cmp"), "--gate-exit"])
    out = capsys.readouterr().out
    row = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"][0]
    assert row["metric"] == "lm_eval/toy/acc" and row["delta"] == pytest.approx(0.25) and row["n"] == 40
    assert "McNemar" in row["method"] and "40 pairs" in row["method"] and row["verdict"] == "improved"
    assert code == 0 and "gate PASSED" in out and "paired by doc_id over 40 documents per task" in out
    assert "lm_eval/toy/acc" in (tmp_path / "cmp" / "report.md").read_text()


def test_a_run_is_named_by_its_folder_its_model_folder_or_its_results_file(tmp_path):
    out = write_run(tmp_path / "a", [1.0, 0.0, 1.0])
    want = out / "m" / f"results_{DATE}.json"
    assert find_results(out) == find_results(out / "m") == find_results(want) == want
    write_run(tmp_path / "a2", [1.0, 0.0, 1.0], model="other")
    (out / "other").symlink_to(tmp_path / "a2" / "other")
    with pytest.raises(Exception, match="holds 2 lm-eval runs"):
        find_results(out)


def _refused(capsys, *argv) -> str:
    assert cli.main(["compare", "--lm-eval", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_other_documents_or_tasks_are_refused(tmp_path, capsys):
    a = write_run(tmp_path / "a", [1.0, 0.0, 1.0, 1.0])
    fewer = write_run(tmp_path / "fewer", [1.0, 0.0, 1.0])
    assert "toy: the runs scored different documents (4 in" in _refused(capsys, a, fewer)
    other = write_run(tmp_path / "other", [1.0, 0.0, 1.0, 1.0], hashes=["doc0", "doc1", "CHANGED", "doc3"])
    assert "doc_id 2 is another document in the two runs" in _refused(capsys, a, other)
    renamed = write_run(tmp_path / "renamed", [1.0, 0.0, 1.0, 1.0])
    results = next(renamed.glob("*/results_*.json"))
    results.write_text(results.read_text().replace('"toy"', '"toy2"'))
    next(renamed.glob("*/samples_*.jsonl")).rename(results.parent / f"samples_toy2_{DATE}.jsonl")
    err = _refused(capsys, a, renamed)
    assert "different tasks: toy only in" in err and "toy2 only in" in err
    assert "two lm-eval runs, A and B" in _refused(capsys, a, renamed, fewer)


def test_files_that_are_not_lm_evals_are_refused(tmp_path, capsys):
    a = write_run(tmp_path / "a", [1.0, 0.0, 1.0])
    (tmp_path / "x.json").write_text("[1, 2]")
    assert "not an lm-eval results file" in _refused(capsys, tmp_path / "x.json", a)
    (tmp_path / "r.json").write_text(json.dumps({"schema": "tunebench.results/1"}))
    assert "is a tunebench results file, not lm-eval's" in _refused(capsys, tmp_path / "r.json", a)
    assert "no lm-eval results_*.json here" in _refused(capsys, tmp_path, a)
    broken = write_run(tmp_path / "broken", [1.0, 0.0, 1.0])
    samples = next(broken.glob("*/samples_*.jsonl"))
    samples.write_text(samples.read_text() + "{not json\n")
    assert f"{samples}:4: not JSON" in _refused(capsys, broken, a)
    samples.unlink()
    assert "run lm-eval with --log_samples" in _refused(capsys, broken, a)
