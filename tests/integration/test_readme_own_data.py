"""README's "Your own data and model", followed as a newcomer would: a JSON Lines file of their own conversations in
OpenAI-messages form, then exactly the command lines of README's marked block, run in a fresh folder with
`python -m tunebench`. The lines on the packaged model run end to end (train, evaluate, report, gate); the line that
names a hub model cannot run offline, so it is parsed and its config built (tests/fixtures/doc_commands.py), as the
docs' other GPU and hub lines are."""

from __future__ import annotations

import json
import shlex

import pytest
from doc_commands import ROOT, DocCommand, check, runnable_lines
from e2e import tunebench_in

MARKER = "<!-- readme:own-data -->"
CONVERSATIONS = 2500
"""Enough for smoke's 2% test split to hold more than the 30 conversations a decision needs (README says so)."""
GATE_EXITS = {"pass": 0, "fail": 1, "inconclusive": 3}


def _write_own_data(path) -> int:
    """The first clean conversations of the packaged ShareGPT file, written as a user's OpenAI-messages JSONL
    (``{"messages": [{"role", "content"}, ...]}``), in the file's order (not split order, so every split gets its
    share)."""
    from tunebench.core.config_schema import PACKAGED_DATA
    from tunebench.data.sources import read_source
    from tunebench.data.standardize import standardize

    lines = []
    for record in read_source(PACKAGED_DATA).records:
        messages, _ = standardize(record)
        if messages is not None:
            lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
        if len(lines) == CONVERSATIONS:
            break
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def _needs_the_hub(argv: list[str], cwd) -> bool:
    """A line whose model is a hub id: neither packaged nor a path in the folder."""
    refs = [a.split("=", 1)[1] for a in argv if a.startswith(("model.ref=", "model_name=", "model_name_or_path="))]
    return any(not r.startswith("packaged:") and not (cwd / r).exists() for r in refs)


@pytest.mark.slow
def test_readme_own_data_lines_run_a_users_jsonl_end_to_end(tmp_path):
    lines = runnable_lines(ROOT / "README.md", MARKER)
    assert len(lines) == 3, lines  # README promises three lines: own data, own model, the decision
    written = _write_own_data(tmp_path / "my.jsonl")
    assert written == CONVERSATIONS

    ran, parsed_only = [], []
    for n, line in enumerate(lines, start=1):
        words = shlex.split(line, comments=True)
        assert words[0] == "tunebench", line
        argv = words[1:]
        if _needs_the_hub(argv, tmp_path):
            check(DocCommand(f"README.md own-data line {n}", line, tuple(argv)))  # flags, preset, keys, values
            parsed_only.append(line)
            continue
        res = tunebench_in(tmp_path, *argv, timeout=3600)
        ran.append((argv, res))
    assert len(parsed_only) == 1 and "model.ref=" in parsed_only[0], parsed_only
    assert [a[0] for a, _ in ran] == ["run", "gate"], [a for a, _ in ran]

    (run_argv, run), (_, gate) = ran
    assert run.returncode == 0, run.stderr[-4000:]
    folder = tmp_path / run_argv[run_argv.index("--out") + 1]
    data = json.loads((folder / "data" / "data_report.json").read_text())
    assert data["source"].endswith("my.jsonl") and data["records"] == CONVERSATIONS
    assert data["clean"] >= 0.95 * CONVERSATIONS, data["dropped"]  # OpenAI messages read as conversations
    test_split = data["splits"]["test"]["conversations"]
    assert test_split >= 30, data["splits"]

    rows = {r["metric"]: r for r in json.loads((folder / "comparison.json").read_text())["rows"]}
    assert rows["perplexity/test"]["n"] == test_split  # base and tuned paired on every test conversation
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# smoke\n")
    assert any(d in report[:600] for d in ("**Ship.**", "**Don't ship.**", "**Not enough evidence.**")), report[:600]
    assert "report.md" in run.stdout + run.stderr  # the run ends by naming its report

    verdict = json.loads((folder / "gate.json").read_text())["status"]
    assert gate.returncode == GATE_EXITS[verdict], (gate.returncode, verdict, gate.stdout[-2000:], gate.stderr[-2000:])
