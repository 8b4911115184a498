"""No traceback on user input (issue 27): damaged data lines are dropped as malformed with their line numbers, and
every reader of a results, comparison, stages or data-report file exits 2 naming the file, the field and the fix.

The fuzz cases break one results file of a synthetic run folder in each way a file gets broken (truncated, empty,
binary, nested too deeply, huge, null or the wrong type where a field belongs) and run `report`, `compare` and
`gate` on it in-process (the same path as the command line; two subprocess runs check the real process too).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic  # tests/fixtures/synthetic.py (on sys.path via conftest)

from tunebench import cli
from tunebench.app.stages import Stages
from tunebench.compare.comparison import Comparison, compare
from tunebench.core.config_schema import DataConfig
from tunebench.core.errors import RunFileError
from tunebench.data.conversations import prepare
from tunebench.data.data_report import read_report
from tunebench.data.sources import read_file
from tunebench.data.standardize import standardize_and_split
from tunebench.evals.results import Results
from tunebench.gate import verdict as gate_mod

# ----------------------------------------------------------------------------- data lines


def _conv(i: int, question: str | None = None) -> dict:
    return {
        "conversations": [
            {"from": "human", "value": question or f"question {i}?"},
            {"from": "gpt", "value": f"answer {i}."},
        ]
    }


def _jsonl_with_bad_lines(path: Path, n_good: int = 60) -> Path:
    """Lines 3, 5, 7 and 8 are broken: a non-UTF-8 byte, 3,000 levels of nesting, lone surrogates (valid JSON)."""
    lines = [json.dumps(_conv(i)).encode() for i in range(n_good)]
    lines[2] = json.dumps(_conv(2)).encode().replace(b"question", b"quest\xffion")
    lines[4] = b"[" * 3000 + b"]" * 3000
    lines[6] = json.dumps(_conv(6, "say \\ud800 twice")).replace("\\\\ud800", "\\ud800").encode()
    lines[7] = json.dumps({"id": "x\ud800", **_conv(7)}).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_undecodable_deep_and_surrogate_lines_are_malformed_with_line_numbers(tmp_path, smol_tokenizer):
    tok, name = smol_tokenizer
    source = _jsonl_with_bad_lines(tmp_path / "data.jsonl")
    prepared = prepare(tok, name, DataConfig(source=str(source), max_length=256), tmp_path / "out")
    report = json.loads((tmp_path / "out" / "data_report.json").read_text(encoding="utf-8"))
    assert report["dropped"] == {"malformed": 4}
    assert report["malformed_lines"] == [3, 5, 7, 8] and report["malformed_lines_total"] == 4
    column = source.read_bytes().splitlines()[2].index(b"\xff") + 1
    assert report["malformed_reasons"][0] == f"line 3: not UTF-8 (byte 0xff at column {column})"
    assert "nested too deeply" in report["malformed_reasons"][1] and "surrogate" in report["malformed_reasons"][2]
    assert sum(len(c) for c in prepared.conversations.values()) == 56  # the rest of the file was read
    md = (tmp_path / "out" / "data_report.md").read_text(encoding="utf-8")
    assert "malformed: 4 (lines 3, 5, 7, 8); first: line 3: not UTF-8" in md


def test_the_line_list_is_capped_and_the_count_is_not(tmp_path):
    good = [json.dumps(_conv(i)) for i in range(5)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(good + ["{broken"] * 30 + good) + "\n", encoding="utf-8")
    std = standardize_and_split(read_file(path), DataConfig(test_fraction=0.0, validation_fraction=0.0))
    assert std.dropped["malformed"] == 30 and std.malformed_lines == list(range(6, 36))


def test_a_lone_surrogate_from_a_json_array_is_malformed_not_a_crash(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_conv(1), {"id": "bad\ud800", **_conv(2)}, _conv(3, "q \ud800")]), encoding="utf-8")
    std = standardize_and_split(read_file(path), DataConfig(test_fraction=0.0, validation_fraction=0.0))
    assert std.dropped == {"malformed": 2} and len(std.splits["train"]) == 1
    assert std.drop_examples["malformed"] == ["bad\\ud800", "2"]  # shown escaped: the report is UTF-8


def test_a_record_nested_too_deeply_in_a_json_array_keeps_the_records_before_it(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[" + json.dumps(_conv(1)) + ", " + "[" * 100_000 + "]" * 100_000 + "]", encoding="utf-8")
    raw = read_file(path)
    assert len(raw.records) == 1 and "nested too deeply" in raw.warnings[0]


def test_a_damaged_data_report_names_the_field_and_the_data_command(tmp_path):
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    (data / "data_report.json").write_text(json.dumps({**synthetic.data_report(), "template": None}))
    with pytest.raises(
        RunFileError,
        match=r"data_report.json: template must be an object, got null; re-run "
        r"`tunebench data .*config.yaml --out",
    ):
        read_report(data)


# ----------------------------------------------------------------------------- results files, fuzzed


def _mutated(good: dict, change) -> bytes:
    data = copy.deepcopy(good)
    change(data)
    return json.dumps(data).encode()


def broken_results(good_bytes: bytes) -> dict[str, tuple[bytes, str]]:
    """Case name -> (file bytes, a phrase the error must hold)."""
    good = json.loads(good_bytes)
    first_items = good["metrics"][0]["items"]

    def metric0(**kw):
        return lambda d: d["metrics"][0].update(kw)

    return {
        "truncated": (good_bytes[: len(good_bytes) // 2], "not valid JSON (line"),
        "empty": (b"", "empty"),
        "blank": (b" \n\n", "empty"),
        "binary": (bytes(range(256)) * 4, "not UTF-8"),
        "deeply-nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        "huge-number": (b'{"schema": ' + b"9" * 5000 + b"}", "not valid JSON for tunebench"),
        "huge-and-cut": (b'{"schema": "tunebench.results/1", "label": "' + b"x" * 5_000_000, "not valid JSON"),
        "null": (b"null", "holds null, not a"),
        "list": (b"[]", "holds a list of 0"),
        "other-schema": (_mutated(good, lambda d: d.update(schema="tunebench.results/0")), "'tunebench.results/0'"),
        "label-null": (_mutated(good, lambda d: d.update(label=None)), "label must be a string, got null"),
        "model-null": (_mutated(good, lambda d: d.update(model=None)), "model must be an object, got null"),
        "inputs-list": (_mutated(good, lambda d: d.update(inputs=[])), "inputs must be an object, got a list"),
        "metrics-null": (_mutated(good, lambda d: d.update(metrics=None)), "metrics must be a list, got null"),
        "metric-null": (_mutated(good, lambda d: d["metrics"].__setitem__(0, None)), "metrics[0] must be an object"),
        "value-string": (_mutated(good, metric0(value="high")), 'perplexity/test).value must be a number, got "high"'),
        "value-missing": (_mutated(good, lambda d: d["metrics"][0].pop("value")), ".value is missing"),
        "direction-string": (_mutated(good, metric0(higher_is_better="yes")), "higher_is_better must be true or false"),
        "n-float": (_mutated(good, metric0(n=1.5)), ".n must be an integer, got 1.5"),
        "n-bool": (_mutated(good, metric0(n=True)), ".n must be an integer, got true"),
        "ci-string": (_mutated(good, metric0(ci_low="0.1")), ".ci_low must be a number or null"),
        "aggregate": (_mutated(good, metric0(aggregate="median")), "aggregate must be one of 'mean', 'exp_ratio'"),
        "details-list": (_mutated(good, metric0(details=[1])), ".details must be an object"),
        "items-null": (_mutated(good, lambda d: d.update(items=None)), "items must be an object, got null"),
        "item-num-null": (
            _mutated(good, lambda d: d["items"][first_items][3].update(num=None)),
            f"items.{first_items}[3].num must be a number, got null",
        ),
        "item-id-missing": (_mutated(good, lambda d: d["items"][first_items][0].pop("id")), "[0].id is missing"),
        "item-not-object": (
            _mutated(good, lambda d: d["items"][first_items].__setitem__(0, 7)),
            "[0] must be an object",
        ),
        "timings-string": (
            _mutated(good, lambda d: d["timings"].update(total_s="fast")),
            "timings.total_s must be a number",
        ),
        "artifacts-null": (_mutated(good, lambda d: d.update(artifacts=None)), "artifacts must be an object, got null"),
    }


BASE, TUNED = synthetic.make_pair("improved")
CASES = broken_results(json.dumps(BASE.to_dict()).encode())


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    run = synthetic.write_run(tmp_path_factory.mktemp("good") / "run", BASE, TUNED, n_boot=200)
    assert cli.main(["gate", str(run)]) in (0, 3)  # the undamaged folder reads: failures below are the damage's
    return run


def _one_paragraph_exit_2(argv: list[str], capsys, *needles: str) -> str:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n\n" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    return err


@pytest.mark.parametrize("case", list(CASES))
def test_every_reader_exits_2_naming_the_file_and_field(tmp_path, capsys, good_run, case):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    path = run / "eval" / "base" / "results.json"
    data, needle = CASES[case]
    path.write_bytes(data)
    fix = f"re-run `tunebench eval {run}`"
    for argv in (["report", str(run)], ["compare", str(run)], ["gate", str(run)]):
        _one_paragraph_exit_2(argv, capsys, str(path), needle, fix)


def test_a_damaged_artifact_result_stops_the_report(tmp_path, capsys, good_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    path = run / "eval" / "gguf-q8_0" / "results.json"
    path.parent.mkdir()
    path.write_text("{", encoding="utf-8")
    _one_paragraph_exit_2(
        ["report", str(run)], capsys, str(path), f"--model {run}/export/model-q8_0.gguf --data-from {run}"
    )


def test_the_real_command_prints_one_paragraph(tmp_path, good_run):
    """Two subprocesses (about 3 s each): the installed entry point, stderr as a user sees it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    path = run / "eval" / "tuned" / "results.json"
    good = json.loads(path.read_text(encoding="utf-8"))
    for command, data, needle in (
        ("report", b'{"schema": "tunebench.res', "not valid JSON"),
        ("gate", _mutated(good, lambda d: d["metrics"][0].update(value="high")), ".value must be a number"),
    ):
        path.write_bytes(data)
        p = subprocess.run(
            [sys.executable, "-m", "tunebench", command, str(run)], capture_output=True, text=True, timeout=120
        )
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert str(path) in p.stderr and needle in p.stderr and "tunebench eval" in p.stderr


# ----------------------------------------------------------------------------- comparison, stages, gate


def test_comparison_file_is_checked_field_by_field(tmp_path):
    comp = compare(*synthetic.make_pair("improved"), n_boot=200).to_dict()
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(comp), encoding="utf-8")
    assert Comparison.load(path).to_dict() == comp
    for change, needle in (
        (lambda d: d["rows"][0].update(delta="-0.3"), "rows[0] (perplexity/test).delta must be"),
        (lambda d: d.update(rows=None), "rows must be a list, got null"),
        (lambda d: d.update(alpha=None), "alpha must be a number, got null"),
    ):
        path.write_bytes(_mutated(comp, change))
        with pytest.raises(RunFileError, match=r"comparison.json: .*tunebench report") as e:
            Comparison.load(path)
        assert needle in str(e.value)
    path.write_bytes(b"")
    with pytest.raises(RunFileError, match="empty"):
        Comparison.load(path)


def test_stages_file_and_the_outputs_it_skips_are_checked(tmp_path, good_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    stages = run / "stages.json"
    for data, needle in (
        (b'{"data": "ab', "not valid JSON"),
        (b'{"data": 3}', "data must be a string or an object, got 3"),
        (b"[]", "the top level must be an object"),
    ):
        stages.write_bytes(data)
        with pytest.raises(RunFileError, match=f"stages.json: .*{needle}.*delete .*stages.json"):
            Stages(run)
    stages.write_text('{"eval_base": "fp"}', encoding="utf-8")
    base = run / "eval" / "base" / "results.json"
    assert Stages(run).fresh("eval_base", "fp", base)
    base.write_text("", encoding="utf-8")  # the stage would be skipped on a file nothing can read
    with pytest.raises(RunFileError, match="results.json: empty.*re-run `tunebench eval"):
        Stages(run).fresh("eval_base", "fp", base)
    (run / "timings.json").write_text('{"stages": {"data": "slow"}}', encoding="utf-8")
    with pytest.raises(RunFileError, match="timings.json: stages.data must be"):
        Stages(run)


def test_gate_keeps_the_traceback_of_a_real_bug(monkeypatch, good_run):
    """gate_main maps the readers' and rules' errors to exit 2, not every ValueError: a bug stays visible."""

    def planted_bug(*args, **kwargs):
        raise ValueError("a bug in the gate, not bad input")

    monkeypatch.setattr(gate_mod, "evaluate_gate", planted_bug)
    with pytest.raises(ValueError, match="a bug in the gate"):
        gate_mod.gate_main(good_run)
    with pytest.raises(ValueError, match="a bug in the gate"):
        cli.main(["-v", "gate", str(good_run)])


def test_a_binary_rules_file_is_invalid_input(tmp_path, capsys, good_run):
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(bytes(range(256)))
    _one_paragraph_exit_2(
        ["gate", str(good_run), "--rules", str(rules), "--out", str(tmp_path / "g.json")],
        capsys,
        str(rules),
        "cannot be read as a YAML rules file",
    )


def test_results_written_by_tunebench_read_back_unchanged():
    base, _ = synthetic.make_pair("improved")
    assert Results.from_dict(base.to_dict()).to_dict() == base.to_dict()
