"""Everything a config can be refused for is refused before any model loads, in the practitioner's words:
TRL/PEFT names read as ours, errors say whether the command line or which file set the bad key, lm-eval task
names, probe files, the contamination n-gram and gate rules are checked at config time, splits too small to
decide anything warn (or fail under --strict), and a foreign adapter made for another base is refused."""

from __future__ import annotations

import json
import logging
import re

import pytest

from tunebench import cli
from tunebench.app.preflight import could_match, preflight
from tunebench.core.config import load_config
from tunebench.core.config_schema import DataConfig
from tunebench.core.errors import AdapterError, ConfigError, GateError, ProbeError
from tunebench.data.splits import MIN_TEST_CONVERSATIONS, split_problems
from tunebench.evals.contamination import MIN_SHINGLE_WORDS
from tunebench.evals.families import MetricShape

# ----------------------------------------------------------------------------- the practitioner's names


def test_trl_and_peft_names_read_as_ours_and_say_so_once(caplog):
    names = [
        "train.learning_rate=1e-4",
        "train.per_device_train_batch_size=3",
        "train.gradient_accumulation_steps=2",
        "train.num_train_epochs=2",
        "lora.lora_alpha=8",
        "lora.rank=4",
        "lora.lora_dropout=0.1",
        "train.max_seq_length=256",
        "warmup_steps=3",
        "weight_decay=0.1",
    ]
    with caplog.at_level(logging.INFO, logger="tunebench.core.config"):
        cfg = load_config("smoke", names)
        load_config("smoke", names)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.epochs) == (1e-4, 3, 2, 2.0)
    assert (cfg.lora.alpha, cfg.lora.r, cfg.lora.dropout) == (8, 4, 0.1)
    assert (cfg.data.max_length, cfg.train.warmup_steps, cfg.train.weight_decay) == (256, 3, 0.1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("read train.learning_rate as train.lr") == 1
    assert (
        "read train.max_seq_length as data.max_length" in lines and "read warmup_steps as train.warmup_steps" in lines
    )
    assert load_config("smoke", ["learning_rate=3e-4"]).train.lr == 3e-4  # TRL's bare command-line name


def test_aliases_in_a_preset_file_and_a_clash_names_the_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  learning_rate: 5.0e-5\nlora:\n  lora_alpha: 64\n")
    cfg = load_config(p)
    assert cfg.train.lr == 5e-5 and cfg.lora.alpha == 64
    p.write_text("train:\n  learning_rate: 5.0e-5\n  lr: 1.0e-4\n")
    with pytest.raises(
        ConfigError, match=r"mine.yaml: train.learning_rate and train.lr set the same field \(train.lr\)"
    ):
        load_config(p)


@pytest.mark.parametrize(
    "override, right, wrong",
    [
        ("train.learing_rate=1", "'train.lr'", "padding_free"),
        ("train.gradient_acumulation_steps=2", "'train.grad_accum'", "gradient_checkpointing"),
        ("train.per_device_batch_size=2", "'train.batch_size'", None),
        ("train.lora_alpha=8", "'lora.alpha'", None),
        ("lora.ranks=8", "'lora.r'", None),
        ("train.lrr=1", "'train.lr'", None),
    ],
)
def test_did_you_mean_knows_the_aliases_and_compares_key_names(override, right, wrong):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    msg = str(e.value)
    assert f"did you mean {right}" in msg
    assert wrong is None or f"did you mean 'train.{wrong}'" not in msg


def test_an_error_says_whether_the_command_line_or_which_file_set_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line \(train\.lrr=1\): unknown key 'train\.lrr'"):
        load_config("smoke", ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"^command line \(train\.batch_size=two\): "):
        load_config("smoke", ["train.batch_size=two"])
    p = tmp_path / "preset.yaml"
    p.write_text("train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=rf"^{p}: unknown key 'train.lrr'"):
        load_config(p, ["lora.r=8"])  # an override elsewhere does not take the blame


# ----------------------------------------------------------------------------- before any model loads


@pytest.mark.parametrize(
    "override, needle",
    [
        ("eval.lm_eval_tasks=arc_eassy", "did you mean 'arc_easy'"),
        ("eval.probe_files=defualt", "eval.probe_files: unknown probe set 'defualt' (did you mean 'default'?)"),
        ("eval.contamination_ngram=5", f"below {MIN_SHINGLE_WORDS}"),
        ("eval.perplexity=false", "needs metric 'perplexity/test', which this config never produces"),
        ("gate.rules=/nonexistent-rules.yaml", "rules file '/nonexistent-rules.yaml' not found"),
        ("train.learing_rate=1", "did you mean 'train.lr'"),
        ("train.batch_size=two", "not an integer"),
        ("train.backend=unslot", "did you mean 'unsloth'"),
        ("data.test_fraction=1.5", "[0, 1)"),
        ("lora.rank=0", "lora.r: 0 must be >= 1"),
        ("eval.probe_sampling=[{name: a, temperature: -1}]", "temperature"),
    ],
)
def test_bad_config_values_exit_2_at_config_time_without_a_traceback(capsys, override, needle):
    assert cli.main(["config", "smoke", override]) == 2
    out, err = capsys.readouterr()
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out == ""  # nothing printed as if the config were fine


def test_a_bad_probe_file_fails_at_config_time_with_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nversion: 1\nprobes:\n  - id: a\n    template: hi\n    checks: [{contans: x}]\n")
    with pytest.raises(ProbeError, match=rf"eval.probe_files: {bad}:\d+"):
        preflight(load_config("smoke", [f"eval.probe_files=[{bad}]"]))


def _rules(tmp_path, metric, **extra):
    p = tmp_path / "rules.yaml"
    p.write_text(json.dumps({"rules": [{"metric": metric, "max_regression": 0.05, **extra}]}))
    return str(p)


@pytest.mark.parametrize(
    "metric, tasks, ok",
    [
        ("lm_eval/arc_easy/acc", "[tunebench_facts_mc]", False),  # a task not configured
        ("lm_eval/tunebench_facts_mc/acc", "[tunebench_facts_mc]", True),
        ("lm_eval/tunebench/acc", "[tunebench]", True),  # a group's pooled metric
        ("lm_eval/tunebench/tunebench_facts_mc/acc", "[tunebench]", True),  # a group member
        ("lm_eval/*/acc**", "[]", False),
        ("probes/default/greedy/pass_rate", "[]", True),
        ("probes/nosuchset/*/pass_rate", "[]", False),
        ("perplexity/validation", "[]", False),
    ],
)
def test_a_required_gate_rule_must_name_a_metric_the_config_produces(tmp_path, metric, tasks, ok):
    cfg = load_config("smoke", [f"eval.lm_eval_tasks={tasks}", f"gate.rules={_rules(tmp_path, metric)}"])
    if ok:
        preflight(cfg)
    else:
        with pytest.raises(GateError, match=r"rules.yaml rule 1|rules.yaml line \d+"):
            preflight(cfg)
    optional = load_config(
        "smoke", [f"eval.lm_eval_tasks={tasks}", f"gate.rules={_rules(tmp_path, metric, optional=True)}"]
    )
    preflight(optional)  # an optional rule may name what is absent


def test_in_a_whole_run_an_artifact_rule_needs_the_export_that_writes_it(tmp_path):
    rules = _rules(tmp_path, "perplexity/test", artifact="q8_0")
    with pytest.raises(GateError, match="export.gguf"):
        preflight(load_config("smoke", [f"gate.rules={rules}"]), whole_run=True)
    preflight(load_config("smoke", [f"gate.rules={rules}", "export.gguf=[q8_0]"]), whole_run=True)
    preflight(load_config("smoke", [f"gate.rules={rules}"]))  # `tunebench eval` of a hand-made export may follow


def test_the_shipped_export_gate_passes_preflight_with_the_export_its_header_recommends():
    """configs/gates/export.yaml reads q8_0-llamacpp (perplexity and parity/*): a run with `export: {gguf: [q8_0],
    evaluate: llama.cpp}`, as its header says, is accepted; one that scores the GGUF in transformers only, or exports
    nothing, is refused before training, naming what it evaluates and what to set (issue 38)."""
    export = ["gate.rules=export", "export.gguf=[q8_0]"]
    preflight(load_config("smoke", [*export, "export.evaluate=llama.cpp"]), whole_run=True)
    preflight(load_config("smoke", [*export, "export.evaluate=both"]), whole_run=True)
    with pytest.raises(GateError, match=r"q8_0-llamacpp.*it evaluates \['q8_0'\].*export.evaluate: llama.cpp"):
        preflight(load_config("smoke", [*export, "export.evaluate=transformers"]), whole_run=True)
    with pytest.raises(GateError, match="it evaluates none"):
        preflight(load_config("smoke", ["gate.rules=export"]), whole_run=True)
    preflight(load_config("smoke", ["gate.rules=export"]))  # `tunebench eval --runtime llama.cpp` may follow


def test_parity_metrics_are_known_only_for_an_artifact_scored_in_llama_cpp(tmp_path):
    rules = _rules(tmp_path, "parity/kl_mean", artifact="q8_0")  # parity is measured in llama.cpp alone
    with pytest.raises(GateError, match="parity/kl_mean"):
        preflight(load_config("smoke", [f"gate.rules={rules}", "export.gguf=[q8_0]"]), whole_run=True)


def test_glob_matching_of_rules_against_metric_shapes():
    group = MetricShape(("lm_eval", "mmlu"))
    assert could_match("lm_eval/*/acc**", group) and could_match("lm_eval/mmlu/acc", group)
    assert not could_match("lm_eval/mmlu", group) and not could_match("lm_eval/mmlu_pro**", group)
    assert could_match("**", group) and could_match("lm_eval/mm**", group)
    ppl = MetricShape(("perplexity", "test"), open=False)
    assert could_match("perplexity/test", ppl) and could_match("perplexity/*", ppl)
    assert not could_match("perplexity/test/x", ppl) and not could_match("perplexity", ppl)


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "sizes, eval_every, fragments",
    [
        ({"train": 65, "validation": 0, "test": 0}, 0, ["test split: 0", "data.test_fraction"]),
        (
            {"train": 199, "validation": 0, "test": 1},
            6,
            ["test split: 1", "validation split: empty", "train.eval_every=6", "data.validation_fraction"],
        ),
        ({"train": 400, "validation": 16, "test": 12}, 6, ["data.max_test (now 12)"]),
    ],
)
def test_splits_too_small_say_which_setting_to_change(sizes, eval_every, fragments):
    cfg = DataConfig(max_test=12) if "data.max_test (now 12)" in fragments else DataConfig()
    text = " ".join(split_problems(sizes, cfg, eval_every))
    for f in fragments:
        assert f in text
    assert not split_problems({"train": 400, "validation": 16, "test": MIN_TEST_CONVERSATIONS}, cfg, 6)


def test_tunebench_data_warns_on_a_small_source_and_strict_refuses_it(tmp_path, capsys, caplog):
    src = tmp_path / "small.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "conversations": [
                        {"from": "human", "value": f"question {i}?"},
                        {"from": "gpt", "value": f"answer {i}."},
                    ]
                }
            )
            + "\n"
            for i in range(65)
        )
    )
    args = ["data", "smoke", f"data.source={src}", "--out", str(tmp_path / "run")]
    with caplog.at_level(logging.WARNING):
        assert cli.main(args) == 0
    assert any("test split: 0 conversation(s)" in r.getMessage() for r in caplog.records)
    report = json.loads((tmp_path / "run" / "data" / "data_report.json").read_text())
    assert any("test split: 0" in w for w in report["warnings"])  # and in the data report
    capsys.readouterr()
    assert cli.main([*args, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "test split: 0" in err and "data.test_fraction" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- adapters made for another base


def _foreign_adapter(tmp_path, base):
    folder = tmp_path / "foreign"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": base, "peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]})
    )
    (folder / "adapter_model.safetensors").write_bytes(b"not loaded: refused before")
    return folder


def test_an_adapter_naming_another_base_is_refused_before_the_base_loads(tmp_path, capsys):
    folder = _foreign_adapter(tmp_path, "meta-llama/Llama-3.2-1B")
    assert cli.main(["chat", "--model", "packaged:smollm2-135m-instruct", "--adapter", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "'meta-llama/Llama-3.2-1B'" in err and "'packaged:smollm2-135m-instruct'" in err
    assert "another base model" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "base",
    [
        "packaged:smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "/somewhere/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/0123abc",
        "/another/host/.cache/tunebench/gguf/{digest}",  # tunebench's dequantized copy, cached on another host
        "{path}",  # this host's cache path of the same model (what adapters saved before)
    ],
)
def test_the_same_base_under_another_name_still_matches(tmp_path, smol_source, base):
    from tunebench.models.adapters import check_adapter

    digest = smol_source.identity.removeprefix("gguf-sha256:")[:24]
    folder = _foreign_adapter(tmp_path, base.format(digest=digest, path=smol_source.path))
    assert check_adapter(folder, smol_source)  # no error: the sha of the weights


def test_another_gguf_cache_path_is_another_base(tmp_path, smol_source):
    from tunebench.models.adapters import check_adapter

    with pytest.raises(AdapterError, match="another GGUF file"):
        check_adapter(_foreign_adapter(tmp_path, "/x/.cache/tunebench/gguf/" + "0" * 24), smol_source)


def test_the_model_card_holds_the_run_and_the_evaluation_replaces_an_earlier_one(tmp_path):
    import synthetic

    from tunebench.train.model_card import append_evaluation, write_adapter_metadata

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/root/.cache/x/gguf/ab"}))
    m = {**synthetic.manifest(), "final_train_loss": 1.97}
    write_adapter_metadata(tmp_path, m)
    assert (
        json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "packaged:smollm2-135m-instruct"
    )
    card = (tmp_path / "README.md").read_text()
    assert re.search(r"\| final train loss +\| 1\.97 ", card) and re.search(r"\| train conversations +\| 400 ", card)
    append_evaluation(tmp_path, "| metric | base |\n|---|---|\n| perplexity/test | 9.1 |", "runs/x/report.md")
    append_evaluation(tmp_path, "| metric | base |\n|---|---|\n| perplexity/test | 8.7 |", "runs/x/report.md")
    card = (tmp_path / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "8.7" in card and "9.1" not in card and "1.97" in card


def test_every_shipped_preset_passes_the_config_time_checks():
    from tunebench.core.config import preset_names

    for name in preset_names():
        preflight(load_config(name, resolved=False))  # GPU presets too: their tasks, probes and gate rules


def test_the_report_stage_adds_the_headline_to_the_adapters_card(tmp_path):
    import synthetic

    from tunebench.app.pipeline import finish
    from tunebench.core.config import read_run_config
    from tunebench.train.model_card import write_adapter_metadata

    run = synthetic.write_run(tmp_path / "run", *synthetic.make_pair("improved"))
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    write_adapter_metadata(run / "adapter", synthetic.manifest())
    finish(run, read_run_config(run))
    card = (run / "adapter" / "README.md").read_text()
    assert "## Training results" in card and "## Evaluation" in card and "perplexity/test" in card
