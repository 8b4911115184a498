"""Sharded evaluation on the packaged model: `tunebench eval RUN --shard i/N` on 2 and on 3 shards, joined by
`tunebench merge RUN`, gives the results of one unsharded `tunebench eval RUN` in every value, interval, per-item
record and probe answer (perplexity, sampled and greedy probes, lm-eval multiple choice and generation); merge
refuses missing, duplicated and mismatched shards with exit 2 and writes nothing.

Each configuration evaluates a copy of the session's trained run with its own generation cache (answers cached by
one configuration would otherwise be read, not generated, by the next).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tunebench.app import cli
from tunebench.compare.comparison import compare
from tunebench.evals.results import Results

PROBES = """name: shardprobes
version: 1
probes:
  - id: add
    template: "What is {{ a }} + {{ b }}? Reply with the number only."
    vars:
      - {a: 2, b: 3}
      - {a: 7, b: 5}
      - {a: 11, b: 4}
    checks:
      - contains: "{{ a + b }}"
  - id: capital
    template: "What is the capital of {{ country }}?"
    vars:
      - {country: France, capital: Paris}
      - {country: Japan, capital: Tokyo}
    checks:
      - contains: "{{ capital }}"
        ignore_case: true
"""
TIMING = {"seconds", "tokens_per_s"}
"""Metric details that time the work (per machine), not what was measured."""


def overrides(probe_file: Path) -> list[str]:
    """Small, and batched so that every family has several batches (5 probe prompts, 2 samples of the sampled
    setting, 3 answers a batch; perplexity batches of ~2-3 of the 12 test conversations)."""
    return [
        "eval.lm_eval_limit=5",
        "eval.lm_eval_batch_size=4",
        "eval.lm_eval_generate_batch_size=4",
        "eval.lm_eval_chat_template=false",
        "eval.ppl_batch_tokens=400",
        "eval.probe_batch_size=3",
        f"eval.probe_files=[{probe_file}]",
        "eval.probe_sampling=[{name: seed, temperature: 1.5, min_p: 0.1, max_new_tokens: 8, n_samples: 2}, "
        "{name: greedy, temperature: 0.0, min_p: null, max_new_tokens: 8, n_samples: 1}]",
        "eval.judge.enabled=false",
        "eval.bootstrap_samples=200",
    ]


@pytest.fixture(scope="module")
def sharded(smol_adapter_run, smol_source, tmp_path_factory):
    """{"unsharded" | "2" | "3": run folder}: the same trained run evaluated whole, on 2 shards and on 3 (the last
    shard of 3 as a SLURM array task of --array=1-3), each merged."""
    root = tmp_path_factory.mktemp("shards")
    probe_file = root / "shardprobes.yaml"
    probe_file.write_text(PROBES)
    extra = overrides(probe_file)
    runs = {}
    for name, commands in (
        ("unsharded", [["eval", "{run}"]]),
        ("2", [["eval", "{run}", "--shard", "0/2"], ["eval", "{run}", "--shard", "1/2"], ["merge", "{run}"]]),
        ("3", [*(["eval", "{run}", "--shard", f"{i}/3"] for i in range(2)), ["eval", "{run}", "--shard", "slurm"]]),
    ):
        run = root / name
        shutil.copytree(smol_adapter_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval", ".tunebench*"))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TUNEBENCH_CACHE", str(_cache_without_generations(root / f"cache-{name}")))
            mp.setenv("SLURM_ARRAY_TASK_ID", "3")  # read by --shard slurm only: shard 2 of tasks 1..3
            mp.setenv("SLURM_ARRAY_TASK_MIN", "1")
            mp.setenv("SLURM_ARRAY_TASK_MAX", "3")
            mp.setenv("SLURM_ARRAY_TASK_COUNT", "3")
            for argv in commands:
                assert cli.main([a.format(run=run) for a in argv] + extra) == 0, argv
            if name == "3":
                assert cli.main(["merge", str(run), *extra]) == 0
        runs[name] = run
    return runs, extra


def _cache_without_generations(root: Path) -> Path:
    """A cache folder holding the real cache's models and task index (links), but no generated answers."""
    from tunebench.core.io import cache_root

    root.mkdir()
    for entry in cache_root().iterdir():
        if entry.name != "generations":
            (root / entry.name).symlink_to(entry)
    return root


def _results(run: Path) -> dict[str, Results]:
    return {label: Results.load(run / "eval" / label / "results.json") for label in ("base", "tuned")}


@pytest.mark.slow
@pytest.mark.parametrize("shards", ["2", "3"])
def test_merged_shards_equal_one_unsharded_evaluation(sharded, shards):
    runs, _ = sharded
    whole, merged = _results(runs["unsharded"]), _results(runs[shards])
    for label in ("base", "tuned"):
        a, b = whole[label], merged[label]
        assert [m.name for m in b.metrics] == [m.name for m in a.metrics]
        families = {m.group for m in a.metrics}
        assert families == {"perplexity", "probes", "lm_eval"}
        for ma in a.metrics:
            mb = b.metric(ma.name)
            assert (mb.value, mb.ci_low, mb.ci_high, mb.stderr, mb.n) == (
                ma.value,
                ma.ci_low,
                ma.ci_high,
                ma.stderr,
                ma.n,
            )
            assert mb.ci_method == ma.ci_method and mb.higher_is_better == ma.higher_is_better
            assert b.items[mb.items] == a.items[ma.items], ma.name  # every per-item record, in the same order
            assert {k: v for k, v in mb.details.items() if k not in TIMING} == {
                k: v for k, v in ma.details.items() if k not in TIMING
            }
        assert b.inputs == a.inputs
        # the same answers, not only the same pass rates: sampled ones drew from the same batches and seeds
        assert b.artifacts["probe_transcripts"] == a.artifacts["probe_transcripts"]
        for task in ("tunebench_facts_mc", "tunebench_arith_gen"):
            assert b.artifacts[f"lm_eval/{task}"] == a.artifacts[f"lm_eval/{task}"]
        assert b.artifacts["contamination"] == a.artifacts["contamination"]
        assert b.artifacts["sharded"]["shards"] == int(shards)
    # the paired decisions too
    rows_a = compare(whole["base"], whole["tuned"], 0.05, 200).to_dict()["rows"]
    rows_b = compare(merged["base"], merged["tuned"], 0.05, 200).to_dict()["rows"]
    assert rows_b == rows_a
    assert (runs[shards] / "report.md").is_file() and (runs[shards] / "comparison.json").is_file()


@pytest.mark.slow
def test_each_shard_scored_only_its_part(sharded):
    runs, _ = sharded
    for count in (2, 3):
        shard_files = [
            runs[str(count)] / "eval" / "shards" / f"{i}-of-{count}" / "tuned" / "results.json" for i in range(count)
        ]
        parts = [Results.load(p) for p in shard_files]
        whole = _results(runs["unsharded"])["tuned"]
        for m in whole.metrics:
            sizes = [
                len(p.items[p.metric(m.name).items]) if m.name in {x.name for x in p.metrics} else 0 for p in parts
            ]
            assert sum(sizes) == m.n, m.name  # disjoint parts that cover every item
        # perplexity shards whole batches of the plan: more than one shard holds some of them
        assert sum("perplexity/test" in {x.name for x in p.metrics} for p in parts) > 1
        assert [p.artifacts["shard"]["index"] for p in parts] == list(range(count))


def _snapshot(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.name.startswith(".tunebench.lock")
    }


def _refused(capsys, run: Path, argv: list[str]) -> str:
    """merge's error: exit 2, one paragraph without a traceback, nothing in the run folder changed."""
    before = _snapshot(run)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert _snapshot(run) == before
    return err


@pytest.mark.slow
def test_merge_refuses_missing_duplicate_and_mismatched_shards(sharded, tmp_path, capsys):
    runs, extra = sharded
    run = tmp_path / "run"
    shutil.copytree(runs["2"], run)
    shards = run / "eval" / "shards"
    merge = ["merge", str(run), *extra]

    shutil.move(shards / "1-of-2", tmp_path / "kept")  # missing
    err = _refused(capsys, run, merge)
    assert "1-of-2" in err and "missing" in err and f"tunebench eval {run} --shard 1/2" in err

    shutil.copytree(shards / "0-of-2", shards / "1-of-2")  # duplicated: a copy of shard 0 in shard 1's place
    err = _refused(capsys, run, merge)
    assert "holds shard 0/2, not 1/2" in err and "twice" in err
    shutil.rmtree(shards / "1-of-2")
    shutil.move(tmp_path / "kept", shards / "1-of-2")

    shutil.copytree(runs["3"] / "eval" / "shards" / "0-of-3", shards / "0-of-3")  # two splits
    err = _refused(capsys, run, merge)
    assert "2 different splits" in err and "0-of-3" in err
    shutil.rmtree(shards / "0-of-3")

    err = _refused(capsys, run, ["merge", str(run), *extra, "eval.bootstrap_samples=300"])  # other settings
    assert "other settings" in err and "same overrides" in err

    path = shards / "1-of-2" / "tuned" / "results.json"  # one shard evaluated with other settings
    data = json.loads(path.read_text())
    data["artifacts"]["shard"]["fingerprint"] = "0" * 16
    path.write_text(json.dumps(data))
    err = _refused(capsys, run, merge)
    assert "1-of-2" in err and "other settings" in err

    shutil.rmtree(shards)
    err = _refused(capsys, run, merge)
    assert "no shards to merge" in err and "--shard" in err
