"""`tunebench sweep` refuses bad input before anything trains: space files, options, storage (exit 2, one paragraph)."""

from __future__ import annotations

import pytest

from tunebench.app.cli import main
from tunebench.app.sweep_space import SPACES_DIR, load_space
from tunebench.core.config import load_config, override_text, parse_override, preset_names

pytest.importorskip("optuna")


def sweep_main(tmp_path, space_text: str | None, *extra: str) -> int:
    args = ["sweep", "smoke", "--trials", "2", "--out", str(tmp_path / "out"), "--no-confirm"]
    if space_text is not None:
        (tmp_path / "space.yaml").write_text(space_text)
        args += ["--space", str(tmp_path / "space.yaml")]
    return main([*args, *extra])


def refused(tmp_path, capsys, space_text: str | None, *extra: str) -> str:
    code = sweep_main(tmp_path, space_text, *extra)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    msg = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(msg) == 1, err  # one paragraph
    out = tmp_path / "out"
    assert not (out / "data").exists() and not (out / "trials").exists()  # nothing was prepared or trained
    return msg[0]


@pytest.mark.parametrize(
    ("space", "expect"),
    [
        ("lora.rr: {type: categorical, choices: [8, 16]}\n", "did you mean 'lora.r'"),
        ("train.lerning_rate: {type: float, low: 1.0e-4, high: 1.0e-3}\n", "did you mean"),
        ("lora.r: {type: categorical, choises: [8, 16]}\n", "did you mean 'choices'"),
        ("train.lr: {type: float, low: 3.0e-3, high: 1.0e-4}\n", "bad bounds"),
        ("train.lr: {type: float, low: 0, high: 1.0e-3, log: true}\n", "bad bounds"),
        ("lora.dropout: {type: float, low: 0.0, high: 1.5}\n", "refused by the config"),
        ("lora.r: {type: float, low: 4, high: 64}\n", "integer field"),
        ("train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}\n", "type: float with log: true"),
        ("train.lr: {type: flaot, low: 1.0e-4, high: 1.0e-3}\n", "did you mean 'float'"),
        ("lora.r: [8, 16]\n", "not a distribution"),
        ("data.max_length: {type: int, low: 64, high: 128}\n", "cannot be tuned"),
        ("train.seed: {type: int, low: 1, high: 9}\n", "--seeds"),
        ("", "empty"),
        (
            "lora.r: {type: categorical, choices: [16]}\ntrain.lr: {type: float, low: 1.0e-4, high: 1.0e-4}\n",
            "nothing to tune",
        ),
        ("lora.r: {type: categorical, choices: [8, 16\n", "not valid YAML"),
    ],
)
def test_bad_space_exits_2_before_anything_runs(tmp_path, capsys, space, expect):
    assert expect in refused(tmp_path, capsys, space)


def test_bad_options_exit_2(tmp_path, capsys):
    assert "--seeds" in refused(tmp_path, capsys, None, "--seeds", "0")
    assert "no such file" in refused(tmp_path, capsys, None, "--space", str(tmp_path / "missing.yaml"))


def test_unreachable_storage_exits_2_naming_it(tmp_path, capsys):
    msg = refused(tmp_path, capsys, None, "--storage", "sqlite:////proc/no-such-dir/study.db")
    assert "sqlite:////proc/no-such-dir/study.db" in msg
    msg = refused(tmp_path, capsys, None, "--storage", "postgresql://sweeper:s3cret@127.0.0.1:1/tunebench")
    assert "127.0.0.1:1/tunebench" in msg and "s3cret" not in msg  # named, password hidden


def test_every_shipped_space_validates_against_its_preset():
    spaces = sorted(SPACES_DIR.glob("*.yaml"))
    assert {p.stem for p in spaces} >= {"smoke", "smollm2-gpu"}
    for path in spaces:
        assert path.stem in preset_names(), f"{path.name} has no preset"
        space = load_space(path, load_config(path.stem, resolved=False))
        assert len(space.searched) >= 3
        assert {"lora.r", "train.lr"} <= {p.key for p in space.params}


def test_space_values_round_trip_through_the_command_line(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "lora:\n  lora_alpha: {type: categorical, choices: [16, 32]}\n"  # nested, and PEFT's name for lora.alpha
        "  target_modules: {type: categorical, choices: [[q_proj, v_proj], [q_proj, k_proj, v_proj, o_proj]]}\n"
        "train.lr: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}\n"
        "train.warmup_steps: {type: int, low: 0, high: 10, step: 5}\n"
    )
    space = load_space(tmp_path / "s.yaml", load_config("smoke", resolved=False))
    assert [p.key for p in space.params] == ["lora.alpha", "lora.target_modules", "train.lr", "train.warmup_steps"]
    tm = space.params[1]
    assert tm.labels() == ["q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj"]
    assert tm.value_of("q_proj,v_proj") == ["q_proj", "v_proj"]
    for key, value in [("train.lr", 1.2345e-05), ("lora.target_modules", ["q_proj", "v_proj"]), ("lora.r", 8)]:
        text = override_text(key, value)
        cfg = load_config("smoke", [text], resolved=False)
        got = cfg.lora.target_modules if key == "lora.target_modules" else parse_override(text)[1]
        assert got == value
