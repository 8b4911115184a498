"""The practitioner's names (issue 40, item 5): TRL's, PEFT's and transformers' keys read as ours, in presets, as
dotted overrides and as `--flags`; a did-you-mean that ranks those names first; and one line whenever one setting
makes another do nothing."""

from __future__ import annotations

import logging

import pytest
import yaml

from tunebench import cli
from tunebench.app import cli as app_cli
from tunebench.core import config_build, config_resolve
from tunebench.core.config import load_config
from tunebench.core.errors import ConfigError, closest


@pytest.fixture
def fresh(monkeypatch, caplog):
    """A process that has announced nothing yet, and the config logger's lines."""
    monkeypatch.setattr(config_build, "_ANNOUNCED", set())
    monkeypatch.setattr(config_resolve, "_SAID", set())
    caplog.set_level(logging.INFO, logger="tunebench.core.config")
    return caplog


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tunebench.core.config"]


def test_the_issue_names_set_the_fields_they_mean(fresh):
    cfg = load_config(
        "smoke",
        [
            "report_to=tensorboard",
            "logging_steps=5",
            "bf16=true",
            "warmup_ratio=0.1",
            "num_train_epochs=3",
            "model_name=packaged:smollm2-135m-instruct",
            "rank=8",
            "max_seq_length=256",
        ],
        resolved=False,
    )
    assert cfg.train.report_to == ["tensorboard"] and cfg.train.logging_steps == 5
    assert cfg.model.dtype == "bfloat16" and cfg.train.warmup_ratio == 0.1 and cfg.train.epochs == 3.0
    assert cfg.model.ref == "packaged:smollm2-135m-instruct" and cfg.lora.r == 8 and cfg.data.max_length == 256
    said = lines(fresh)
    assert "read bf16=true as model.dtype=bfloat16" in said and "read rank as lora.r" in said
    for alias, field in [("lora_r", "r"), ("r", "r")]:
        assert getattr(load_config("smoke", [f"{alias}=4"], resolved=False).lora, field) == 4
    assert load_config("smoke", ["model_name_or_path=x/y"], resolved=False).model.ref == "x/y"
    assert load_config("smoke", ["fp16=true"], resolved=False).model.dtype == "float16"
    assert load_config("smoke", ["train.bf16=true"], resolved=False).model.dtype == "bfloat16"


def test_a_switch_set_to_false_sets_nothing_and_says_so(fresh):
    cfg = load_config("smoke", ["bf16=false", "model.dtype=float32", "fp16=no"], resolved=False)
    assert cfg.model.dtype == "float32"
    assert load_config("smoke", ["bf16=false"], resolved=False).model.dtype == "auto"
    assert any(line.startswith("bf16=false sets nothing: model.dtype keeps its value") for line in lines(fresh))
    with pytest.raises(ConfigError, match=r"bf16: 'maybe' is not a boolean; true sets model.dtype=bfloat16"):
        load_config("smoke", ["bf16=maybe"])


def test_the_names_work_in_a_preset_file_too(tmp_path, fresh):
    p = tmp_path / "mine.yaml"
    p.write_text(
        "model_name_or_path: packaged:smollm2-135m-instruct\nbf16: true\nreport_to: [tensorboard]\n"
        "train:\n  warmup_ratio: 0.05\n  logging_steps: 2\nlora:\n  lora_r: 4\n"
    )
    cfg = load_config(p, resolved=False)
    assert (cfg.model.dtype, cfg.train.report_to, cfg.train.warmup_ratio) == ("bfloat16", ["tensorboard"], 0.05)
    assert (cfg.train.logging_steps, cfg.lora.r) == (2, 4)
    p.write_text("rank: 4\nlora:\n  r: 8\n")
    with pytest.raises(ConfigError, match=r"rank and lora.r set the same field \(lora.r\)"):
        load_config(p)


def test_valid_keys_read_as_before(fresh):
    """Nothing changes for a config that uses tunebench's own names: no alias line, no override line."""
    cfg = load_config("smoke", ["train.lr=1e-4", "lora.r=32", "train.max_steps=20", "model.dtype=float32"])
    assert (cfg.train.lr, cfg.lora.r, cfg.train.max_steps, cfg.model.dtype) == (1e-4, 32, 20, "float32")
    assert cfg.train.warmup_ratio is None and cfg.train.warmup_steps == 2
    assert lines(fresh) == []


@pytest.mark.parametrize(
    "override, right",
    [
        ("report_too=tensorboard", "'train.report_to'"),
        ("logging_step=5", "'train.logging_steps'"),
        ("ranks=8", "'lora.r'"),
        ("model_nam=x", "'model.ref'"),
        ("warmup_ration=0.1", "'train.warmup_ratio'"),
        ("bf17=true", "'model.dtype'"),
        ("lr=1e-4", "'train.lr'"),  # a field's exact name in another section beats a look-alike (lora.r)
        ("batch_size=4", "'train.batch_size'"),
        ("trian.lr=1e-4", "'train'"),  # a section's name is still a section's name
        ("train.rank=8", "'lora.r'"),
        ("train.learing_rate=1", "'train.lr'"),
        ("train.lora_alpha=8", "'lora.alpha'"),
    ],
)
def test_did_you_mean_ranks_the_practitioner_names_first(override, right):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    assert f"did you mean {right}" in str(e.value)


def test_closest_prefers_the_preferred_names_on_a_tie():
    assert closest("ranc", ["rank", "ranb"], first=["ranb"]) == "ranb"
    assert closest("ranc", ["rank", "ranb"], first=["rank"]) == "rank"
    assert closest("trian", ["rank", "train"], first=["rank"]) == "train"  # closer wins over preferred
    assert closest("zzz", ["rank"]) is None


def test_one_line_when_a_setting_makes_another_do_nothing(fresh):
    load_config("smoke", ["num_train_epochs=3"])
    load_config("smoke", ["num_train_epochs=3"])  # a second resolution in the process says nothing new
    said = [line for line in lines(fresh) if "does nothing" in line]
    assert said == [
        "train.epochs=3 does nothing: train.max_steps=12 sets the length of training "
        "(add train.max_steps=-1 to train for 3 epochs)"
    ]
    fresh.clear()
    load_config("smoke", ["num_train_epochs=3", "max_steps=-1"])
    assert not [line for line in lines(fresh) if "does nothing" in line]
    load_config("smoke", ["warmup_ratio=0.25"])
    assert "train.warmup_ratio=0.25 replaces train.warmup_steps=2 (3 of 12 updates)" in lines(fresh)
    load_config("smoke", ["train.scheduler=constant"])
    assert any(
        line.startswith("train.scheduler=constant has no warm-up, so train.warmup_steps=2") for line in lines(fresh)
    )
    load_config("smoke", ["eval.probe_sampling=[{name: g, temperature: 0, n_samples: 3, min_p: null}]"])
    assert "eval.probe_sampling 'g': temperature 0 decodes greedily, so n_samples=3 does nothing" in " ".join(
        lines(fresh)
    )
    assert {r.levelname for r in fresh.records if "does nothing" in r.getMessage()} == {"WARNING"}


def test_warmup_ratio_is_a_share(fresh):
    with pytest.raises(ConfigError, match=r"train.warmup_ratio: 1.5 must be a share of the updates in \[0, 1\)"):
        load_config("smoke", ["warmup_ratio=1.5"])


def test_config_keys_as_flags_on_the_commands_that_take_overrides(capsys, fresh):
    argv = ["config", "smoke", "--learning_rate", "2e-4", "--lora-r=8", "--bf16", "--max_steps", "-1"]
    assert cli.main([*argv, "--num-train-epochs", "2", "--train.logging_steps", "3", "--packing", "false"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["train"]["lr"], cfg["lora"]["r"], cfg["model"]["dtype"]) == (2e-4, 8, "bfloat16")
    assert (cfg["train"]["max_steps"], cfg["train"]["epochs"], cfg["train"]["logging_steps"]) == (-1, 2.0, 3)
    assert cfg["train"]["packing"] is False
    assert "read learning_rate as train.lr" in lines(fresh)  # announced like an override


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["config", "smoke", "--learning_rat", "2e-4"],
            "--learning_rat is not an option of this command, nor a "
            "config key: unknown key 'learning_rat'; did you mean 'train.lr'",
        ),
        (["config", "smoke", "--learning_rate"], "--learning_rate needs a value"),
        (["train", "smoke", "--learning_rate", "--resume"], "--learning_rate needs a value"),
        (["config", "smoke", "--per_device_train_batch_size", "two"], "train.batch_size: 'two' is not an integer"),
    ],
)
def test_a_bad_flag_exits_2_naming_it(argv, needle, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err


def test_own_options_keep_their_meaning():
    parser = app_cli.build_parser()

    def parse(*argv):  # as cli.main does: overrides after the options come back as extras
        args, extra = parser.parse_known_args(list(argv))
        return args, [*getattr(args, "overrides", []), *extra]

    args, overrides = parse("train", "smoke", "--resume", "--over", "--learning_rate", "1e-4", "lora.r=4")
    assert args.resume and args.overwrite and overrides == ["learning_rate=1e-4", "lora.r=4"]
    args, overrides = parse("eval", "runs/x", "--eval.lm_eval_limit", "4", "--label", "mine")
    assert args.run == "runs/x" and overrides == ["eval.lm_eval_limit=4"] and args.label == "mine"
    args, overrides = parse("sweep", "smoke", "--trials", "2", "--max_steps", "3")
    assert args.trials == 2 and overrides == ["max_steps=3"]
    assert parse("report", "runs/x", "--learning_rate", "1e-4")[1] == ["--learning_rate", "1e-4"]  # not taken


def test_an_unset_warmup_ratio_leaves_earlier_fingerprints_alone():
    """A run folder or sweep study made before train.warmup_ratio existed is the same run: not trained again."""
    from tunebench.app.stages import train_settings

    cfg = load_config("smoke", resolved=False)
    assert "warmup_ratio" not in train_settings(cfg)
    assert train_settings(load_config("smoke", ["warmup_ratio=0.1"], resolved=False))["warmup_ratio"] == 0.1
