"""The command line's flow without a model: every `--help` example parses, the gate takes its shipped rules as the
docs write them, and `chat --help` shows its defaults. (The examples run for real against a finished run folder in
tests/integration/test_pipeline.py.)"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from tunebench import cli
from tunebench.app import cli as app_cli
from tunebench.app.cli_parser import EXAMPLES
from tunebench.bench import cli as bench_cli
from tunebench.gate.rules import GATES_DIR

PUBLISHED = Path(__file__).resolve().parents[2] / "reports/published/2026-12-01-h200-smollm2-standard-limit100"


def help_examples() -> list[list[str]]:
    """`tunebench --help`'s examples as argv lists (without `tunebench` and the trailing comments)."""
    lines = [line.split("#")[0].strip() for line in EXAMPLES.splitlines()[1:]]
    return [shlex.split(line)[1:] for line in lines if line]


@pytest.mark.parametrize("argv", help_examples(), ids=shlex.join)
def test_every_help_example_parses(argv):
    if argv[0] == "bench":  # dispatched to the benchmarks' own parser before the application's
        args = bench_cli.build_parser().parse_args(argv[1:])
        assert args.command == "speed"
    else:
        args = app_cli.build_parser().parse_args(argv)
        assert args.fn.__name__ == f"cmd_{argv[0]}"


def test_gate_takes_the_shipped_rules_by_name_or_as_the_docs_write_the_path(tmp_path, monkeypatch, capsys):
    """`--rules configs/gates/default.yaml` from a folder without configs/ (configs are package data) and
    `--rules default` judge with the shipped file; a missing path still fails with exit 2."""
    run = tmp_path / "run"
    shutil.copytree(PUBLISHED, run)
    monkeypatch.chdir(tmp_path)
    for rules in ("configs/gates/default.yaml", "default"):
        assert cli.main(["gate", str(run), "--rules", rules, "--out", str(tmp_path / "v.json")]) in (0, 1, 3)
        out = capsys.readouterr().out
        assert str(GATES_DIR / "default.yaml") in out
    assert cli.main(["gate", str(run), "--rules", "configs/gates/nothing.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_chat_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["chat", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default: packaged:smollm2-135m-instruct)",
        "(default: 0.0)",  # greedy unless asked otherwise (issue 40)
        "(default: 0.1)",
        "(default: 256)",
        "(default: auto)",
    ):
        assert default in text, default


@pytest.mark.parametrize(
    "argv, overrides",
    [
        (
            ["sweep", "smoke", "--trials", "12", "--seeds", "2", "--pruner", "hyperband", "train.max_steps=200"],
            ["train.max_steps=200"],
        ),
        (["run", "smoke", "lora.r=8", "--gate-exit", "train.lr=1e-4"], ["lora.r=8", "train.lr=1e-4"]),
        (
            ["train", "smoke", "--overwrite", "train.max_steps=2", "data.max_train=10"],
            ["train.max_steps=2", "data.max_train=10"],
        ),
    ],
)
def test_overrides_may_follow_the_options(argv, overrides):
    """docs/sweeps.md writes `tunebench sweep smollm2-gpu --trials 12 ... train.max_steps=200`: overrides after the
    options join the ones before them, in order."""
    args = app_cli.parse_args(argv)
    assert args.overrides == overrides
    assert args.fn.__name__ == f"cmd_{argv[0]}"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "smoke", "--gate-exit", "--bogus"],  # an unknown flag
        ["run", "smoke", "--gate-exit", "train.lr=1e-4", "stray"],  # a word that is no override
        ["gate", "runs/smoke", "--rules", "default", "train.lr=1e-4"],  # gate takes no overrides
    ],
)
def test_anything_else_after_the_options_is_refused_as_argparse_does(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    # argparse's refusal; a flag that looks like a config key (--learning_rate) is tried as one first and refused as
    # an unknown key, with argparse's usage line
    assert "unrecognized arguments" in err or ("usage: tunebench" in err and "unknown key 'bogus'" in err), err
