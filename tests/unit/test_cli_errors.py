"""The CLI maps every error class to its exit code, prints one paragraph without a traceback (-v adds it),
and real bad input of each kind exits 2 with a message that says what to do."""

from __future__ import annotations

import pytest

from tunebench import cli
from tunebench.app import cli as app_cli
from tunebench.core import errors


def _all_error_classes(cls=errors.TunebenchError):
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all_error_classes(sub)
    return sorted(set(out), key=lambda c: c.__name__)


EXPECTED = {errors.Interrupted: 130}


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_maps_to_its_exit_code(monkeypatch, capsys, cls):
    def boom(args):
        raise cls("what went wrong, where, and what to do")

    monkeypatch.setattr(app_cli, "cmd_presets", boom)
    assert cli.main(["presets"]) == EXPECTED.get(cls, 2) == cls.exit_code
    err = capsys.readouterr().err
    assert "what went wrong, where, and what to do" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["-v", "presets"]) == cls.exit_code
    assert "Traceback" in capsys.readouterr().err  # -v shows where it came from


def test_every_module_error_is_in_the_one_hierarchy():
    """Error classes defined anywhere in tunebench derive from TunebenchError (so the CLI maps them by class)."""
    import importlib
    import inspect
    import pkgutil

    import tunebench

    strays = []
    for mod in pkgutil.walk_packages(tunebench.__path__, "tunebench."):
        if mod.name.endswith("__main__"):
            continue
        m = importlib.import_module(mod.name)
        for name, obj in vars(m).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Exception)
                and obj.__module__ == m.__name__
                and not issubclass(obj, errors.TunebenchError)
            ):
                strays.append(f"{m.__name__}.{name}")
    assert not strays, f"error classes outside tunebench.core.errors' hierarchy: {strays}"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["config", "smok"], "Did you mean 'smoke'?"),
        (["config", "smoke", "train.lrr=1"], "did you mean 'train.lr'"),
        (["data", "smoke", "data.source=/nonexistent.jsonl"], "no such file"),
        (["data", "smoke", "model.ref=/nonexistent/x.gguf"], "no such GGUF file"),
        (["chat", "--adapter", "/nonexistent"], "no such folder"),
        (["gate", "/nonexistent-run"], "no such run folder"),
        (["eval", "/nonexistent-run"], "not a tunebench run folder"),
        (["compare", "/nonexistent-a", "/nonexistent-b"], "no such run folder"),
        (["gate", "runs/x", "--rules", "/nonexistent-rules.yaml"], "rules"),
        (["run", "smoke", "eval.judge.prompt_sets=[mtbenc]"], "did you mean 'mt_bench'"),
        (["run", "smoke", "eval.judge.template=/nonexistent.jinja"], "does not exist"),
        (["run", "smoke", "eval.judge.model=null"], "set exactly one of eval.judge.model"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    if argv[:2] == ["gate", "runs/x"]:
        (tmp_path / "runs" / "x").mkdir(parents=True)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_report_rerenders_a_gpu_run_folder_on_a_cpu(tmp_path, capsys):
    """`tunebench report` reads the run's recorded (resolved) config: a folder made on a GPU, whose config asks for
    4-bit weights, re-renders here; the MMLU group leads its section and the gate verdict is the stored one."""
    import json
    import shutil
    from pathlib import Path

    published = Path(__file__).resolve().parents[2] / "reports/published/2026-12-01-h200-smollm2-standard-limit100"
    run = tmp_path / "run"
    shutil.copytree(published, run)
    for f in ("report.md", "comparison.json", "gate.json", "export_comparison.json"):
        (run / f).unlink()
    assert cli.main(["report", str(run)]) == 0
    report = (run / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# smollm2-standard\n\n**Not enough evidence.**")
    assert "`lm_eval/mmlu/acc`" in report and "## Export" in report
    gate, stored = (json.loads((d / "gate.json").read_text()) for d in (run, published))
    assert gate["status"] == stored["status"] == "inconclusive" and gate["counts"] == stored["counts"]
    # the same verdict on every rule (the rules file's path is this checkout's; the reason's wording is newer)
    verdict = ("rule", "metric", "status", "base", "tuned", "delta")
    assert [{k: r.get(k) for k in verdict} for r in gate["rows"]] == [
        {k: r.get(k) for k in verdict} for r in stored["rows"]
    ]
    # intervals, p-values, n and items needed are issue 35's (one method per row; clustered probe samples count
    # prompts), so they match the library's judgment of the published folder now, not the stored file
    from tunebench.gate.verdict import judge_run

    numbers = ("ci_low", "ci_high", "p_value", "n", "items_needed")
    assert [{k: r.get(k) for k in numbers} for r in gate["rows"]] == [
        {k: getattr(r, k) for k in numbers} for r in judge_run(published).rows
    ]
    assert "report:" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
