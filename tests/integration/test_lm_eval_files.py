"""`tunebench compare --lm-eval A B` on lm-eval 0.4.13's own CLI output: the packaged model, once as base and once
with the session's trained adapter (`peft=`), on the shipped offline tasks (multiple choice and generation) with
`--log_samples`. The rows read from those files equal tunebench's own comparison of the same models on the same
documents (`tunebench eval --model ... [--adapter ...]`): values, per-document items, and every paired row. Runs
of other documents and files that are not lm-eval's are refused (exit 2) on copies of the real output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import tunebench

from tunebench.app import cli
from tunebench.compare.comparison import compare
from tunebench.core.config_schema import PACKAGED_MODEL
from tunebench.evals.lm_eval.files import read_lm_eval_run
from tunebench.evals.lm_eval.tasks import TASKS_DIR
from tunebench.evals.results import Results

TASKS = ["tunebench_facts_mc", "tunebench_arith_gen"]
LIMIT = 6


def lm_eval_cli(model_args: str, out: Path) -> None:
    """lm-eval's own command line, as a user runs it."""
    argv = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", ",".join(TASKS)]
    argv += ["--include_path", str(TASKS_DIR), "--limit", str(LIMIT), "--batch_size", "4", "--device", "cpu"]
    argv += ["--log_samples", "--output_path", str(out)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def both(smol_adapter_run, smol_source, tmp_path_factory):
    """(lm-eval's output of base and adapter, tunebench's own results of both, the folder)."""
    root = tmp_path_factory.mktemp("lm-eval-files")
    adapter = smol_adapter_run / "adapter"
    lm_eval_cli(f"pretrained={smol_source.path},dtype=float32", root / "base")
    lm_eval_cli(f"pretrained={smol_source.path},dtype=float32,peft={adapter}", root / "lora")
    own = {}
    settings = [f"eval.lm_eval_tasks=[{','.join(TASKS)}]", f"eval.lm_eval_limit={LIMIT}"]
    settings += ["eval.lm_eval_chat_template=false", "eval.lm_eval_batch_size=4", "eval.perplexity=false"]
    settings += ["eval.probe_files=[]", "eval.judge.enabled=false", "gate.rules=lm_eval"]
    for label, extra in (("base", []), ("tuned", ["--adapter", str(adapter)])):
        out = root / "own" / f"{label}.json"
        done = tunebench(
            "eval", "--model", PACKAGED_MODEL, *extra, "--data-from", str(smol_adapter_run), "--label", label,
            "--out", str(out), *settings,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
        own[label] = Results.load(out)
    return root, own


@pytest.mark.slow
def test_rows_from_lm_evals_files_equal_tunebenchs_own_comparison(both, capsys):
    root, own = both
    base, tuned = read_lm_eval_run(root / "base", "base").results, read_lm_eval_run(root / "lora", "tuned").results
    names = {m.name for m in own["base"].metrics}
    assert names == {
        "lm_eval/tunebench_facts_mc/acc",
        "lm_eval/tunebench_facts_mc/acc_norm",
        "lm_eval/tunebench_arith_gen/exact_match",
    }
    for files, mine in ((base, own["base"]), (tuned, own["tuned"])):
        assert {m.name for m in files.metrics} == names
        for task in TASKS:  # the same documents: lm-eval's own hash of each, in doc_id order
            assert files.inputs[f"lm_eval/{task}"]["docs"] == mine.inputs[f"lm_eval/{task}"]["docs"]
        for name in names:
            a, b = files.metric(name), mine.metric(name)
            assert (a.value, a.stderr, a.ci_low, a.ci_high, a.n) == (b.value, b.stderr, b.ci_low, b.ci_high, b.n)
            assert files.items[a.items] == mine.items[b.items]  # every document's score, paired by doc_id
    from_files = compare(base, tuned, 0.05, 2000, same_base=False).to_dict()["rows"]
    from_own = compare(own["base"], own["tuned"], 0.05, 2000).to_dict()["rows"]
    # every row equal; their order is not: lm-eval's files are read task by task in name order, tunebench's own
    # results keep the order of the config's task list
    by_metric = lambda rows: sorted(rows, key=lambda r: r["metric"])  # noqa: E731
    assert by_metric(from_files) == by_metric(from_own)
    assert [r["metric"] for r in from_files] == sorted(r["metric"] for r in from_files)
    # paired methods (McNemar's test on pairs, the paired bootstrap), never Welch's unpaired interval
    assert all(re.search(r"\bpair", r["method"]) for r in from_files), [r["method"] for r in from_files]

    out = root / "cmp"
    code = cli.main(["compare", "--lm-eval", str(root / "base"), str(root / "lora"), "--out", str(out), "--gate-exit"])
    text = capsys.readouterr().out
    gate = json.loads((out / "gate.json").read_text())
    assert code == {"pass": 0, "fail": 1, "inconclusive": 3}[gate["status"]]
    assert json.loads((out / "comparison.json").read_text())["rows"] == from_files
    assert "lm_eval/tunebench_facts_mc/acc" in (out / "report.md").read_text()
    assert "paired by doc_id over 6 documents per task" in text and "gate " in text


def _refused(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.slow
def test_other_documents_and_foreign_files_are_refused(both, tmp_path, capsys, smol_adapter_run):
    root, _ = both
    base = root / "base"
    lora = tmp_path / "lora"
    shutil.copytree(root / "lora", lora)
    samples = next(lora.glob("*/samples_tunebench_facts_mc_*.jsonl"))
    lines = samples.read_text().splitlines()

    samples.write_text("\n".join(lines[:-1]) + "\n")  # one document fewer
    err = _refused(capsys, ["compare", "--lm-eval", str(base), str(lora)])
    assert "tunebench_facts_mc: the runs scored different documents" in err and "doc_id 5" in err

    other = json.loads(lines[2])
    other["doc_hash"] = "0" * 64  # the same doc_id, another document
    samples.write_text("\n".join(lines[:2] + [json.dumps(other)] + lines[3:]) + "\n")
    err = _refused(capsys, ["compare", "--lm-eval", str(base), str(lora)])
    assert "doc_id 2 is another document" in err

    arith = next(lora.glob("*/samples_tunebench_arith_gen_*.jsonl"))
    arith.unlink()
    results = next(lora.glob("*/results_*.json"))
    data = json.loads(results.read_text())
    for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        data[key].pop("tunebench_arith_gen", None)
    results.write_text(json.dumps(data))
    samples.write_text("\n".join(lines) + "\n")
    err = _refused(capsys, ["compare", "--lm-eval", str(base), str(lora)])
    assert "different tasks: tunebench_arith_gen only in" in err

    arith_base = next(base.glob("*/samples_tunebench_arith_gen_*.jsonl"))
    shutil.copytree(base, tmp_path / "nosamples")
    next((tmp_path / "nosamples").glob("*/samples_tunebench_arith_gen_*.jsonl")).unlink()
    err = _refused(capsys, ["compare", "--lm-eval", str(tmp_path / "nosamples"), str(base)])
    assert f"no {arith_base.name}" in err and "--log_samples" in err

    (tmp_path / "junk.json").write_text('{"hello": 1}')
    err = _refused(capsys, ["compare", "--lm-eval", str(tmp_path / "junk.json"), str(base)])
    assert "not an lm-eval results file" in err
    err = _refused(capsys, ["compare", "--lm-eval", str(root / "own" / "base.json"), str(base)])
    assert "is a tunebench results file, not lm-eval's" in err
    err = _refused(capsys, ["compare", "--lm-eval", str(smol_adapter_run), str(base)])
    assert "no lm-eval results_*.json here" in err
