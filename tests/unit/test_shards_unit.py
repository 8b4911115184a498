"""Sharded evaluation without a model: which shard owns what (`--shard i/N`, SLURM arrays, the stable hash), the
join of shards' per-item records (values and intervals rebuilt by each family's function), and the refusals of
`eval --shard` and `merge` (exit 2, a message that says what to do). The equality of merged and unsharded results
on the packaged model is tests/integration/test_shards.py."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from tunebench.app import cli
from tunebench.core.config import load_config
from tunebench.core.config_build import dump_yaml
from tunebench.core.errors import ConfigError, ShardError
from tunebench.core.shards import Shard, from_slurm, parse_shard, stable_hash
from tunebench.evals.lm_eval.convert import mean_metric
from tunebench.evals.perplexity import perplexity_metric
from tunebench.evals.probes.sets import pass_rate
from tunebench.evals.results import Metric, Results
from tunebench.evals.shard_merge import Part, merge_parts

# ----------------------------------------------------------------------------- which shard owns what


def test_shard_spec_counts_from_zero_and_refuses_the_rest():
    assert parse_shard("0/2") == Shard(0, 2) and parse_shard(" 2 / 3 ") == Shard(2, 3)
    assert Shard(1, 4).name == "1-of-4"
    for bad, says in (
        ("2/2", "shards count from 0, so the shards of 2 are 0/2 .. 1/2"),
        ("-1/2", "count from 0"),
        ("0/0", "at least 1"),
        ("1-of-2", "give INDEX/COUNT"),
        ("half", "give INDEX/COUNT"),
    ):
        with pytest.raises(ConfigError, match=".*") as e:
            parse_shard(bad)
        assert says in str(e.value), bad


@pytest.mark.parametrize(
    "env, want",
    [
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"}, Shard(2, 4)),
        (  # --array=1-4: task 1 is shard 0
            {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4"},
            Shard(0, 4),
        ),
        (  # --array=0-6:2 (tasks 0, 2, 4, 6)
            {
                "SLURM_ARRAY_TASK_ID": "4",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "6",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            Shard(2, 4),
        ),
    ],
)
def test_slurm_array_numbers_the_shards(env, want):
    assert from_slurm(env) == want
    assert parse_shard("slurm", env) == want


def test_slurm_refuses_a_job_that_is_not_one_stepped_array():
    with pytest.raises(ConfigError, match="not set; run it as a task of a SLURM job array"):
        from_slurm({})
    listed = {  # --array=1,5,7
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "7",
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    with pytest.raises(ConfigError, match="not one evenly stepped range.*--array=0-"):
        from_slurm(listed)
    with pytest.raises(ConfigError, match="not whole numbers"):
        from_slurm({**listed, "SLURM_ARRAY_TASK_ID": "x"})


def test_stable_hash_is_the_same_in_every_process_and_each_item_has_one_shard():
    assert stable_hash("tunebench_facts_mc/0") == 13062104649110338335  # SHA-256, pinned: not Python's hash()
    other = subprocess.run(
        [sys.executable, "-c", "from tunebench.core.shards import stable_hash; print(stable_hash('mmlu_anatomy/7'))"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert int(other.stdout) == stable_hash("mmlu_anatomy/7")
    keys = [f"task/{i}" for i in range(300)]
    for n in (2, 3, 5):
        owners = [[s for s in range(n) if Shard(s, n).owns(k)] for k in keys]
        assert all(len(o) == 1 for o in owners)
        sizes = [sum(o == [s] for o in owners) for s in range(n)]
        assert min(sizes) > 300 / n * 0.7  # roughly even
        batches = [[s for s in range(n) if Shard(s, n).owns_batch(b)] for b in range(10)]
        assert batches == [[b % n] for b in range(10)]


# ----------------------------------------------------------------------------- the join


def _items(ids, seed=0):
    rng = random.Random(seed)
    return [{"id": i, "num": float(rng.random() < 0.6), "den": 1} for i in ids]


def _ppl_items(ids, seed=1):
    rng = random.Random(seed)
    return [{"id": i, "num": rng.uniform(20, 80), "den": rng.randint(10, 40)} for i in ids]


def _whole() -> Results:
    """An unsharded results object of three families (their own metric functions, as the evaluation makes them)."""
    res = Results(label="base", model={"base": {"identity": "x"}, "dtype": "float32"}, inputs={"test_tokens": "t"})
    ppl = _ppl_items([f"c{k}" for k in range(9)])
    res.add(perplexity_metric(ppl, "test", 900, n_boot=300, alpha=0.05), ppl)
    probes = _items([f"p{k}#{s}" for k in range(5) for s in range(2)])
    res.add(pass_rate("probes/set/seed/pass_rate", probes, {"set": "set", "sampling": "seed"}), probes)
    docs = _items([str(d) for d in range(7)], seed=3)
    template = Metric("lm_eval/task/acc", 0.0, True, 0, unit="documents", group="lm_eval", items="lm_eval/task/acc")
    res.add(mean_metric(template, docs), docs)
    return res


def _split(whole: Results, owner) -> list[Part]:
    """``whole``'s items dealt to shards by ``owner(metric, position) -> shard``, each shard's metrics computed over
    its items, with the unsharded order recorded as a shard does."""
    order = {m.name: [i["id"] for i in whole.items[m.items]] for m in whole.metrics}
    parts = []
    for s in range(2):
        res = Results(label="base", model=dict(whole.model), inputs=dict(whole.inputs))
        for m in whole.metrics:
            mine = [i for k, i in enumerate(whole.items[m.items]) if owner(m.name, k) == s]
            if mine:
                res.add(Metric(**{**m.__dict__, "items": None, "details": dict(m.details)}), mine)
        res.artifacts["shard_order/all"] = order
        parts.append(Part(f"shard {s}", res))
    return parts


def test_joined_items_give_the_unsharded_values_and_intervals():
    whole = _whole()
    merged = merge_parts(_split(whole, lambda name, k: (k * 7 + len(name)) % 3 % 2), n_boot=300, alpha=0.05)
    for m in whole.metrics:
        got = merged.metric(m.name)
        assert (got.value, got.ci_low, got.ci_high, got.stderr, got.n) == (m.value, m.ci_low, m.ci_high, m.stderr, m.n)
        assert merged.items[got.items] == whole.items[m.items]


def test_lm_eval_metric_is_lm_evals_own_mean_and_stderr():
    from lm_eval.api.metrics import mean, mean_stderr

    values = [random.Random(5).uniform(0, 3) for _ in range(11)]
    template = Metric("lm_eval/t/m", 0.0, True, 0, group="lm_eval")
    m = mean_metric(template, [{"id": str(k), "num": v, "den": 1} for k, v in enumerate(values)])
    assert (m.value, m.stderr) == (mean(values), mean_stderr(values))
    one = mean_metric(template, [{"id": "0", "num": 1.0, "den": 1}])
    assert one.stderr is None and one.ci_low is None  # lm-eval reports "N/A" for one document


def test_join_refuses_overlapping_missing_and_inconsistent_shards():
    whole = _whole()
    parts = _split(whole, lambda name, k: k % 2)
    dup = _split(whole, lambda name, k: k % 2)
    dup[1].results.items["probes/set/seed/pass_rate"].append(whole.items["probes/set/seed/pass_rate"][0])
    with pytest.raises(ShardError, match=r"item 'p0#0' of probes/set/seed/pass_rate was scored by two shards"):
        merge_parts(dup, 300, 0.05)
    gone = _split(whole, lambda name, k: k % 2)
    gone[1].results.metrics = [m for m in gone[1].results.metrics if m.group != "perplexity"]
    with pytest.raises(ShardError, match=r"perplexity/test: no shard scored 4 of its 9 items \(first: 'c1'\)"):
        merge_parts(gone, 300, 0.05)
    parts[1].results.inputs["test_tokens"] = "other"
    with pytest.raises(ShardError, match="shard 1 and shard 0 differ in inputs test_tokens"):
        merge_parts(parts, 300, 0.05)
    parts = _split(whole, lambda name, k: k % 2)
    parts[1].results.model["adapter_sha256"] = "abc"
    with pytest.raises(ShardError, match="shard 1 scored another model than shard 0: model.adapter_sha256"):
        merge_parts(parts, 300, 0.05)


# ----------------------------------------------------------------------------- the commands' refusals


@pytest.fixture
def run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(load_config("smoke")))
    return run


@pytest.mark.parametrize(
    "argv, says",
    [
        (["eval", "{run}", "--shard", "2/2"], "shards count from 0"),
        (["eval", "--model", "packaged:smollm2-135m-instruct", "--data-from", "{run}", "--shard", "0/2"], "leave out"),
        (["eval", "{run}", "--shard", "0/2", "--label", "x"], "leave out --label"),
        (["eval", "{run}", "--shard", "slurm"], "SLURM_ARRAY_TASK_ID"),
        (["merge", "{run}"], "no shards to merge; evaluate them first"),
    ],
)
def test_bad_shard_commands_exit_2_without_a_traceback(run_folder, capsys, monkeypatch, argv, says):
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"):
        monkeypatch.delenv(name, raising=False)
    before = sorted(p.name for p in run_folder.rglob("*"))
    assert cli.main([a.format(run=run_folder) for a in argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert sorted(p.name for p in run_folder.rglob("*") if not p.name.startswith(".tunebench.lock")) == before


def test_merge_names_the_missing_shards_and_the_commands_that_write_them(run_folder, capsys):
    for name in ("0-of-3", "2-of-3"):
        (run_folder / "eval" / "shards" / name).mkdir(parents=True)
    assert cli.main(["merge", str(run_folder)]) == 2
    err = capsys.readouterr().err
    assert f"shard 1-of-3 of 3 missing; evaluate it first: tunebench eval {run_folder} --shard 1/3" in err
