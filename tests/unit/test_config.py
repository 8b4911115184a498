"""The typed run config: presets, overrides, validation messages."""

from __future__ import annotations

import logging

import pytest

from tunebench.core.config import load_config, preset_names
from tunebench.core.config_build import dump_yaml, from_dict, to_dict
from tunebench.core.config_resolve import Machine, asked
from tunebench.core.config_schema import RunConfig, SamplingConfig, field_docs
from tunebench.core.errors import ConfigError


def test_every_preset_loads_and_validates():
    names = preset_names()
    assert {"smoke", "llama-3.2-1b-finetome", "llama-3.2-3b-finetome"} <= set(names)
    for name in names:
        for machine in (GPU, CPU):
            try:
                cfg = load_config(name, machine=machine)
            except ConfigError as e:  # a GPU-only preset on a CPU machine: refused with the fix
                assert machine is CPU and "needs CUDA" in str(e) and "use off or auto on CPU" in str(e)
                continue
            assert isinstance(cfg, RunConfig)
            assert cfg.name == name
            assert from_dict(to_dict(cfg)) == cfg  # the resolved config written to run folders reads back
        assert load_config(name, resolved=False).name == name


GPU = Machine(cuda=True, bf16=True, world_size=1, unsloth_installed=True)
CPU = Machine(cuda=False, bf16=False, world_size=1, unsloth_installed=True)


@pytest.mark.parametrize(
    "machine, expected",
    [
        (
            GPU,
            {
                "model.dtype": "bfloat16",
                "model.load_in_4bit": "on",
                "train.optimizer": "adamw_8bit",
                "train.backend": "unsloth",
                "train.padding_free": False,
                "train.compile_blocks": False,
            },
        ),
        (
            CPU,
            {
                "model.dtype": "float32",
                "model.load_in_4bit": "off",
                "train.optimizer": "adamw_torch",
                "train.backend": "unsloth",
                "train.padding_free": False,
                "train.compile_blocks": False,
            },
        ),
        (
            Machine(cuda=True, bf16=False, world_size=2, unsloth_installed=True),
            {
                "model.dtype": "float16",
                "model.load_in_4bit": "on",
                "train.optimizer": "adamw_8bit",
                "train.backend": "hf",
                "train.padding_free": False,
                "train.compile_blocks": False,
            },
        ),
        (
            Machine(cuda=False, bf16=False, world_size=1, unsloth_installed=False),
            {
                "model.dtype": "float32",
                "model.load_in_4bit": "off",
                "train.optimizer": "adamw_torch",
                "train.backend": "hf",
                "train.padding_free": False,
                "train.compile_blocks": False,
            },
        ),
    ],
)
def test_auto_is_resolved_once_with_reasons(machine, expected):
    cfg = load_config(
        "smoke",
        [
            "model.dtype=auto",
            "model.load_in_4bit=auto",
            "train.optimizer=auto",
            "train.backend=auto",
            "train.padding_free=auto",
            "train.compile_blocks=auto",
        ],
        machine=machine,
    )
    got = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in expected}
    assert got == expected
    assert set(cfg.resolution) == set(expected) and all(cfg.resolution.values())
    # the run folder keeps what was asked beside what was resolved
    back = asked(cfg)
    assert all(back[k.split(".")[0]][k.split(".")[1]] == "auto" for k in expected) and back["resolution"] == {}
    assert load_config("smoke", [f"{k}={v}" for k, v in expected.items()], machine=machine).resolution == {}


def test_padding_free_auto_pads_on_both_backends():
    """auto = padded batches (measured faster than Unsloth's padding-free default); explicit values stay."""

    def pf(*extra):
        cfg = load_config("smoke", list(extra), machine=GPU)
        return cfg.train.padding_free, "train.padding_free" in cfg.resolution

    assert pf("train.backend=unsloth") == (False, True)
    assert pf("train.backend=hf") == (False, True)
    assert pf("train.backend=unsloth", "train.packing=true") == (False, True)
    assert pf("train.backend=unsloth", "train.padding_free=true") == (True, False)
    assert pf("train.backend=hf", "train.padding_free=true") == (True, False)
    with pytest.raises(ConfigError, match="padding_free"):
        load_config("smoke", ["train.padding_free=sometimes"], machine=GPU)


def test_compile_blocks_auto_compiles_only_long_padded_unsloth_runs_on_cuda():
    """Compiling Unsloth's blocks costs ~40 s once: auto compiles from COMPILE_BLOCKS_MIN_STEPS optimizer steps on
    (or an epoch-counted run), on unsloth with padded batches on CUDA only; explicit values stay."""
    from tunebench.core.config_resolve import COMPILE_BLOCKS_MIN_STEPS

    def cb(*extra, machine=GPU):
        cfg = load_config("smoke", ["train.backend=unsloth", *extra], machine=machine)
        return cfg.train.compile_blocks, cfg.resolution.get("train.compile_blocks", "")

    long_run = f"train.max_steps={COMPILE_BLOCKS_MIN_STEPS}"
    assert cb(long_run)[0] is True and "faster" in cb(long_run)[1]
    assert cb("train.max_steps=-1")[0] is True and "epoch" in cb("train.max_steps=-1")[1]
    short = cb(f"train.max_steps={COMPILE_BLOCKS_MIN_STEPS - 1}")
    assert short[0] is False and "pays back" in short[1]
    assert cb(long_run, machine=CPU) == (False, "CPU: Unsloth compiles decoder blocks on CUDA only")
    assert cb(long_run, "train.padding_free=true")[0] is False
    assert cb(long_run, "train.packing=true")[0] is False
    assert cb(long_run, "train.backend=hf")[0] is False
    assert cb("train.max_steps=10", "train.compile_blocks=true") == (True, "")
    assert cb(long_run, "train.compile_blocks=false") == (False, "")
    with pytest.raises(ConfigError, match="compile_blocks"):
        load_config("smoke", ["train.compile_blocks=sometimes"], machine=GPU)


def test_llama_presets_carry_the_notebook_settings():
    for name in ("llama-3.2-1b-finetome", "llama-3.2-3b-finetome"):
        cfg = load_config(name, machine=GPU)
        assert cfg.model.ref.startswith("unsloth/Llama-3.2-") and cfg.model.ref.endswith("-Instruct-bnb-4bit")
        assert cfg.data.source == "mlabonne/FineTome-100k"
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 16, 0.0)
        assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        t = cfg.train
        assert (t.batch_size, t.grad_accum, t.warmup_steps, t.lr, t.optimizer) == (2, 4, 5, 2e-4, "adamw_8bit")
        assert (t.weight_decay, t.scheduler, t.seed, t.max_steps, cfg.data.max_length) == (
            0.01,
            "linear",
            3407,
            60,
            2048,
        )
        assert cfg.model.chat_template == "llama-3.1"


def test_each_preset_file_starts_with_the_command_that_runs_it():
    from tunebench.core.config import CONFIGS_DIR

    for p in CONFIGS_DIR.glob("*.yaml"):
        assert p.read_text().startswith(f"# tunebench run {p.stem}"), p


def test_dotted_overrides_are_typed():
    cfg = load_config(
        "smoke",
        [
            "train.lr=1e-4",
            "lora.r=32",
            "train.backend=hf",
            "data.max_test=null",
            "lora.target_modules=q_proj,v_proj",
            "model.trust_remote_code=false",
        ],
    )
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.lora.r == 32 and cfg.train.backend == "hf" and cfg.data.max_test is None
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.lrr=1e-4", ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
        ("trian.lr=1e-4", ["unknown key 'trian'", "did you mean 'train'"]),
        ("train.backend=unslot", ["train.backend", "'unslot'", "did you mean 'unsloth'"]),
        ("train.batch_size=two", ["train.batch_size", "'two'", "not an integer"]),
        ("train.batch_size=0", ["train.batch_size", "must be >= 1"]),
        ("data.test_fraction=1.5", ["data.test_fraction", "[0, 1)"]),
        ("lora.dropout=1.0", ["lora.dropout"]),
        ("report.min_n=1", ["report.min_n", "at least 2"]),
        ("train.lr", ["section.key=value"]),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override, fragments):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    for f in fragments:
        assert f in str(e.value)


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ConfigError, match="(?i)did you mean 'smoke'"):
        load_config("smok")


def test_bad_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("# tunebench run bad\nname: x\ntrain:\n  lr: [1e-4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+"):
        load_config(p)


def test_sampling_entries_are_validated():
    with pytest.raises(ConfigError, match="temperature"):
        load_config("smoke", ["eval.probe_sampling=[{name: a, temperature: -1}]"])
    cfg = load_config("smoke", ["eval.probe_sampling=[{name: g, temperature: 0}]"])
    assert cfg.eval.probe_sampling == [SamplingConfig(name="g", temperature=0.0)]


def test_every_field_has_a_docstring():
    from tunebench.core.config_schema import (
        DataConfig,
        EvalConfig,
        GateConfig,
        LoraConfig,
        ModelConfig,
        ReportConfig,
        RunConfig,
        SamplingConfig,
        TrainConfig,
    )

    for cls in (
        ModelConfig,
        DataConfig,
        LoraConfig,
        TrainConfig,
        SamplingConfig,
        EvalConfig,
        ReportConfig,
        GateConfig,
        RunConfig,
    ):
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if f not in docs]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_report_min_n_is_the_one_minimum_of_report_and_gate(tmp_path):
    """report.min_n defaults to the rows' FEW_SAMPLES, and a run's value reaches the comparison both read."""
    from tunebench.compare.rows import FEW_SAMPLES
    from tunebench.compare.runs import run_settings

    assert load_config("smoke").report.min_n == FEW_SAMPLES == 10
    cfg = load_config("smoke", ["report.min_n=25"])
    assert cfg.report.min_n == 25
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))
    assert run_settings(tmp_path)["min_n"] == 25


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config("smoke", ["train.max_steps=3"])
    p = tmp_path / "config.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(p) == cfg


def test_a_run_folder_from_before_a_new_config_section_is_still_the_same_run(tmp_path):
    import yaml

    from tunebench.app.pipeline import prepare_run_dir
    from tunebench.core.errors import PipelineError

    cfg = load_config("smoke")
    old = to_dict(cfg)
    old.pop("export")  # written by a version without the export section
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_run_dir(cfg, tmp_path, overwrite=False)  # accepted: the defaults make it the same config
    with pytest.raises(PipelineError, match="export.gguf"):
        prepare_run_dir(load_config("smoke", ["export.gguf=[q8_0]"]), tmp_path, overwrite=False)


def test_a_run_folder_whose_recorded_reasons_are_worded_differently_is_still_the_same_run(tmp_path):
    import yaml

    from tunebench.app.pipeline import prepare_run_dir
    from tunebench.core.errors import PipelineError

    cfg = load_config("smoke")
    cfg.resolution["train.backend"] = "unsloth is installed and this is a single-process job"
    old = to_dict(cfg)
    old["resolution"]["train.backend"] = "an older version's wording of the same reason"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_run_dir(cfg, tmp_path, overwrite=False)  # accepted: the reasons explain values, they are not settings
    with pytest.raises(PipelineError, match="train.max_steps"):
        prepare_run_dir(load_config("smoke", ["train.max_steps=3"]), tmp_path, overwrite=False)


def test_a_finished_run_takes_new_eval_judge_report_and_gate_settings_but_not_new_training(tmp_path, caplog):
    """Issue 40 item 10: only the sections no training stage reads may change without --overwrite; config.yaml then
    records the new settings (the stages' fingerprints decide what runs again)."""
    import yaml

    from tunebench.app.pipeline import prepare_run_dir
    from tunebench.core.errors import PipelineError

    prepare_run_dir(load_config("smoke", ["eval.judge.enabled=false"]), tmp_path, overwrite=False)
    changed = load_config(
        "smoke", ["eval.judge.enabled=true", "eval.lm_eval_limit=4", "report.alpha=0.1", "gate.rules=strict"]
    )
    with caplog.at_level(logging.INFO, logger="tunebench.app.pipeline"):
        prepare_run_dir(changed, tmp_path, overwrite=False)
    note = caplog.text
    for diff in ("eval.judge.enabled: False -> True", "eval.lm_eval_limit: 12 -> 4", "report.alpha: 0.05 -> 0.1"):
        assert diff in note, note
    assert "the adapter is reused" in note
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["eval"]["judge"]["enabled"] is True and written["gate"]["rules"] == "strict"
    assert load_config(tmp_path / "config.yaml") == changed
    for training in ("train.max_steps=3", "lora.r=8", "data.max_train=10", "model.dtype=bfloat16"):
        with pytest.raises(PipelineError, match=training.split("=")[0]) as e:
            prepare_run_dir(load_config("smoke", [training]), tmp_path, overwrite=False)
        assert "--overwrite" in str(e.value) and "eval, report, gate settings may change" in str(e.value)
    assert load_config(tmp_path / "config.yaml") == changed  # a refused run leaves the recorded config alone


@pytest.fixture
def fresh_announcements(monkeypatch):
    """Aliases and renamed keys are announced once per process: start each test with none announced yet."""
    from tunebench.core import config_build

    monkeypatch.setattr(config_build, "_ANNOUNCED", set())


def _deprecations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "deprecated" in r.getMessage()]


def test_the_decode_loop_setting_loads_by_its_new_name(fresh_announcements, caplog):
    with caplog.at_level(logging.INFO, logger="tunebench.core.config"):
        cfg = load_config("smoke", ["eval.decode_loop=dynamic"])
    assert cfg.eval.decode_loop == "dynamic" and load_config("smoke").eval.decode_loop == "auto"
    assert not _deprecations(caplog)


def test_the_old_decode_loop_key_still_loads_with_one_deprecation_warning(fresh_announcements, caplog, tmp_path):
    preset = tmp_path / "old.yaml"
    preset.write_text("eval:\n  generation_cache: static\n")
    with caplog.at_level(logging.INFO, logger="tunebench.core.config"):
        by_override = load_config("smoke", ["eval.generation_cache=graph"])
        load_config("smoke", ["eval.generation_cache=graph"])
        in_a_preset = load_config(preset)
    assert by_override.eval.decode_loop == "graph" and in_a_preset.eval.decode_loop == "static"
    assert "generation_cache" not in to_dict(by_override)["eval"]
    warned = _deprecations(caplog)
    assert warned == ["eval.generation_cache is deprecated: it is read as eval.decode_loop, the setting's new name"]
    with pytest.raises(ConfigError, match="set the same field"):
        preset.write_text("eval:\n  generation_cache: static\n  decode_loop: graph\n")
        load_config(preset)


def test_a_run_folder_written_with_the_old_decode_loop_key_is_still_the_same_run(fresh_announcements, tmp_path):
    import yaml

    from tunebench.app.pipeline import prepare_run_dir

    cfg = load_config("smoke")
    old = to_dict(cfg)
    old["eval"]["generation_cache"] = old["eval"].pop("decode_loop")  # written before the rename
    assert from_dict(old) == cfg
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_run_dir(cfg, tmp_path, overwrite=False)  # accepted: the same config under the new name


@pytest.mark.parametrize("key", ["eval.decode_loop", "eval.generation_cache"])
def test_a_bad_decode_loop_exits_2_naming_the_setting_and_its_choices(key, fresh_announcements, capsys):
    from tunebench.app.cli import main

    assert main(["config", "smoke", f"{key}=cuda-graphs"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "eval.decode_loop" in err and "'graph'" in err, err
    assert f"command line ({key}=cuda-graphs)" in err, err


def test_a_section_built_by_code_validates_itself():
    from tunebench.core.config_schema import DataConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"^temperature: -1 must be >= 0"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ConfigError, match=r"^max_length: 8 must be at least 16 tokens"):
        DataConfig(max_length=8)
    with pytest.raises(ConfigError, match=r"^max_steps: 0 must be a positive number"):
        TrainConfig(max_steps=0)


def test_the_export_types_a_config_may_name_are_the_ones_the_export_writes():
    from tunebench.core.config_schema import EXPORT_QUANTS
    from tunebench.train.gguf_tensors import QUANTS

    assert EXPORT_QUANTS == tuple(QUANTS)  # the core layer cannot import the export: the two lists stay in step
