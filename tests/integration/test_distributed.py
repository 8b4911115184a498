"""Data-parallel runs under torchrun and accelerate launch on CPU (2 processes, gloo): training writes from rank 0
only and resumes; evaluation splits batches across processes and gathers results identical to one process; the whole
`tunebench run` under either launcher trains and evaluates in both processes and reports once."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.core.config import load_config
from tunebench.core.config_build import dump_yaml

pytestmark = pytest.mark.slow  # trainings and evaluations under torchrun and accelerate: 45-90 s each

ROOT = Path(__file__).resolve().parents[2]


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    # on a host without GPUs accelerate starts one process unless told --multi_gpu (torchrun underneath, gloo)
    "accelerate": [
        *("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1"),
        *("--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=0"),
    ],
}


def launch(args, nproc=2, cache=None, timeout=900, launcher="torchrun"):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if cache:
        env["TUNEBENCH_CACHE"] = str(cache)  # separate generation caches: nothing is reused between runs
    cmd = [sys.executable, *(LAUNCHERS[launcher] if nproc > 1 else []), "-m", "tunebench", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("ddp")
    cfg = load_config(
        "smoke",
        [
            f"model.ref={tiny_llama_dir}",
            "train.backend=auto",
            "train.max_steps=4",
            "train.save_every=2",
            "train.gradient_checkpointing=false",
            "data.max_train=16",
            "data.max_validation=4",
            "data.max_test=10",
            "data.max_length=128",
            "train.batch_size=2",
            "train.grad_accum=1",
            "train.warmup_steps=0",
            "train.eval_every=0",
            "eval.lm_eval_tasks=[]",
            "eval.probe_sampling=[{name: seed, temperature: 1.5, min_p: 0.1, max_new_tokens: 8, n_samples: 2},"
            " {name: greedy, temperature: 0, max_new_tokens: 8}]",
            "eval.probe_batch_size=4",
        ],
        resolved=False,
    )  # a preset file: each process of the launch resolves `auto` for itself
    (root / "cfg.yaml").write_text(dump_yaml(cfg))
    launch(["train", str(root / "cfg.yaml"), "--out", str(root / "run")])
    return root


def test_ddp_training_writes_once_and_counts_the_whole_job(ddp_run):
    run = ddp_run / "run"
    m = json.loads((run / "adapter" / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["effective_batch_size"] == 4
    assert m["backend"]["name"] == "hf" and "WORLD_SIZE=2" in m["backend"]["reason"]
    assert m["model_wrapper"] == "DistributedDataParallel"  # the ranks trained one model, not two
    assert m["steps"] == 4 and m["tokens_seen"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert len(list((run / "checkpoints" / "checkpoint-2").glob("rng_state_*.pth"))) == 2  # one per rank
    assert not list(run.rglob("*.tmp")) and not (run / "checkpoints" / ".staging").exists()


def test_ddp_resume_on_the_same_world_size_reproduces_the_curve(ddp_run):
    run = ddp_run / "run"
    first = json.loads((run / "adapter" / "manifest.json").read_text())["loss_history"]
    resumed = ddp_run / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "adapter")
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    launch(["train", str(ddp_run / "cfg.yaml"), "--out", str(resumed), "--resume"])
    again = json.loads((resumed / "adapter" / "manifest.json").read_text())["loss_history"]
    assert [p["step"] for p in again] == [1, 2, 3, 4]
    for a, b in zip(first, again, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_resume_on_another_world_size_is_refused_before_loading_anything(ddp_run, tmp_path):
    from tunebench.core.errors import TrainingError
    from tunebench.train.trainer import train

    resumed = tmp_path / "resumed"
    shutil.copytree(ddp_run / "run", resumed)
    shutil.rmtree(resumed / "adapter")
    cfg = load_config(ddp_run / "cfg.yaml")
    with pytest.raises(
        TrainingError,
        match=r"checkpoint-4 was written by a job of 2 process\(es\) and this one has 1"
        r".*torchrun --nproc_per_node 2",
    ):
        train(cfg, resumed, resume=True)
    assert (resumed / "checkpoints" / "checkpoint-4").exists()  # nothing already written is touched


def test_unsloth_under_torchrun_trains_one_model_data_parallel(tmp_path, tiny_llama_dir):
    """Unsloth's own DDP path (its loader maps each rank to its LOCAL_RANK device), here on CPU with gloo."""
    cfg = load_config(
        "smoke",
        [
            f"model.ref={tiny_llama_dir}",
            "train.backend=unsloth",
            "train.max_steps=3",
            "train.save_every=0",
            "data.max_train=16",
            "data.max_validation=4",
            "data.max_test=4",
            "data.max_length=128",
            "train.batch_size=2",
            "train.grad_accum=1",
            "train.warmup_steps=0",
            "train.eval_every=0",
        ],
    )
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    launch(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")])
    m = json.loads((tmp_path / "run" / "adapter" / "manifest.json").read_text())
    assert m["backend"]["name"] == "unsloth" and m["world_size"] == 2 and m["effective_batch_size"] == 4
    assert m["model_wrapper"] == "DistributedDataParallel" and m["steps"] == 3
    assert all(math.isfinite(p["loss"]) for p in m["loss_history"])
    assert len(list((tmp_path / "run").rglob("manifest.json"))) == 1 and not list((tmp_path / "run").rglob("*.tmp"))


def test_sharded_evaluation_equals_one_process(ddp_run, tmp_path, tiny_llama_dir):
    run = ddp_run / "run"
    common = ["--model", str(tiny_llama_dir), "--adapter", str(run / "adapter"), "--data-from", str(run)]
    launch(["eval", *common, "--out", str(tmp_path / "two.json")], nproc=2, cache=tmp_path / "c2")
    launch(["eval", *common, "--out", str(tmp_path / "one.json")], nproc=1, cache=tmp_path / "c1")
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    assert two["inputs"] == one["inputs"]
    p1, p2 = one["items"]["perplexity/test"], two["items"]["perplexity/test"]
    assert [(i["id"], i["den"]) for i in p2] == [(i["id"], i["den"]) for i in p1]
    assert [i["num"] for i in p2] == pytest.approx([i["num"] for i in p1], rel=1e-6)
    assert sorted(two["items"]) == sorted(one["items"])
    for key, items in one["items"].items():
        if key.startswith("probes/"):
            assert two["items"][key] == items, key
    t1, t2 = one["artifacts"]["probe_transcripts"], two["artifacts"]["probe_transcripts"]
    for s in t1["default"]:
        assert [x["output"] for x in t1["default"][s]] == [x["output"] for x in t2["default"][s]], s

    # the same check as a tool (used for the GPU verification): identical, and a changed item is caught
    from tunebench.bench.same_results import compare_results, main

    assert main([str(tmp_path / "one.json"), str(tmp_path / "two.json"), "--out", str(tmp_path / "v.json")]) == 0
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["same"] and verdict["world_sizes"] == [1, 2]
    assert verdict["item_sets"]["perplexity/test"]["n"] == len(p1)
    changed = json.loads(json.dumps(two))
    changed["items"]["perplexity/test"][0]["num"] *= 1.001
    changed["artifacts"]["probe_transcripts"]["default"]["greedy"][0]["output"] += "!"
    verdict = compare_results(one, changed)
    assert not verdict["same"]
    assert verdict["item_sets"]["perplexity/test"]["first_differing"] == [p1[0]["id"]]
    assert verdict["probe_texts"]["default/greedy"]["differing"] == 1


def test_accelerate_launch_trains_one_model_data_parallel(ddp_run, tmp_path):
    """`tunebench train` under accelerate launch: the same job as under torchrun (which the fixture ran)."""
    launch(["train", str(ddp_run / "cfg.yaml"), "--out", str(tmp_path / "run")], launcher="accelerate")
    m = json.loads((tmp_path / "run" / "adapter" / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["effective_batch_size"] == 4 and m["steps"] == 4
    assert m["backend"]["name"] == "hf" and m["model_wrapper"] == "DistributedDataParallel"
    assert all(math.isfinite(p["loss"]) for p in m["loss_history"])
    assert len(list((tmp_path / "run").rglob("manifest.json"))) == 1 and not list((tmp_path / "run").rglob("*.tmp"))


def run_config(tiny_llama_dir, judge: bool) -> list[str]:
    return [
        f"model.ref={tiny_llama_dir}",
        "train.max_steps=2",
        "train.save_every=0",
        "train.eval_every=0",
        "data.max_train=8",
        "data.max_validation=2",
        "data.max_test=8",
        "data.max_length=96",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.warmup_steps=0",
        "eval.lm_eval_tasks=[]",
        "eval.bootstrap_samples=200",
        "eval.probe_sampling=[{name: greedy, temperature: 0, max_new_tokens: 4}]",
        "eval.probe_batch_size=8",
        # rank 0 judges alone once the others are done: a generation that waits for them would hang
        *(
            ["eval.judge.n=2", "eval.judge.answer_max_new_tokens=8", "eval.judge.max_new_tokens=8"]
            + ["eval.judge.sanity_questions=1"]
            if judge
            else ["eval.judge.enabled=false"]
        ),
    ]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_run_under_a_launcher_trains_and_evaluates_in_every_process_and_reports_once(
    launcher, tmp_path, tiny_llama_dir
):
    cfg = load_config("smoke", run_config(tiny_llama_dir, judge=launcher == "torchrun"), resolved=False)
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    run = tmp_path / "run"
    res = launch(["run", str(tmp_path / "cfg.yaml"), "--out", str(run)], launcher=launcher)
    assert res.stdout.count("report: ") == 1  # rank 0 reports; the other process says nothing
    m = json.loads((run / "adapter" / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["model_wrapper"] == "DistributedDataParallel" and m["steps"] == 2
    assert m["backend"]["name"] == "hf" and "WORLD_SIZE=2" in m["backend"]["reason"]
    test_split = json.loads((run / "data" / "data_report.json").read_text())["splits"]["test"]["conversations"]
    for label in ("base", "tuned"):
        results = json.loads((run / "eval" / label / "results.json").read_text())
        assert results["environment"]["world_size"] == 2, label  # the batches were split over both
        assert len(results["items"]["perplexity/test"]) == test_split > 0, label  # every item once, gathered
    stages = json.loads((run / "stages.json").read_text())
    assert {"data", "train", "eval_base", "eval_tuned"} <= set(stages)
    assert ("judge" in stages) == (launcher == "torchrun")
    comparison = json.loads((run / "comparison.json").read_text())
    assert any(r["metric"] == "perplexity/test" for r in comparison["rows"])
    assert (run / "report.md").is_file() and not list(run.rglob("*.tmp"))
    assert len(list(run.rglob("manifest.json"))) == 1


@pytest.mark.gpu
@pytest.mark.skipif(
    not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
    reason="needs a host with 2 or more CUDA GPUs",
)
def test_one_process_on_a_multi_gpu_host_trains_on_one_gpu(tmp_path):
    """Without a launcher, Trainer would wrap the model in nn.DataParallel, which TRL refuses: keep one GPU."""
    import torch

    from tunebench.train.sft_args import sft_config

    cfg = load_config("smoke", [])
    args = sft_config(cfg, tmp_path, "hf", has_val=False, dtype=torch.bfloat16)
    assert args.n_gpu == 1 and args.device == torch.device("cuda:0")
