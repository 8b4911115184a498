"""Record formats (ShareGPT, OpenAI messages, Alpaca) and tool turns, on files written here, through the real data
step with the packaged model's tokenizer (and a llama-3.1 one, which writes tool turns as JSON)."""

from __future__ import annotations

import json

import pytest

from tunebench.app import cli
from tunebench.core.config_schema import DataConfig
from tunebench.data.conversations import prepare
from tunebench.data.data_report import render_report
from tunebench.data.encode import encode, renders_tool_turns, template_info
from tunebench.data.standardize import DROP_REASONS, Conversation, record_format, standardize


def sharegpt(i: int) -> dict:
    return {
        "conversations": [{"from": "human", "value": f"ShareGPT question {i}?"}, {"from": "gpt", "value": f"A{i}."}]
    }


def openai(i: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"OpenAI question {i}?"},
            {"role": "assistant", "content": f"B{i}."},
        ]
    }


def alpaca(i: int) -> dict:
    return {"instruction": f"Add {i} and 1.", "input": "" if i % 2 else f"Show the sum {i}.", "output": f"{i + 1}"}


def tool(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Weather in city {i}?"},
            {"role": "assistant", "content": f'<tool_call>{{"name": "weather", "city": {i}}}</tool_call>'},
            {"role": "tool", "content": f'{{"city": {i}, "sky": "clear"}}'},
            {"role": "assistant", "content": f"Clear skies in city {i}."},
        ]
    }


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_each_record_format_is_told_by_its_keys():
    assert record_format(sharegpt(1)) == "sharegpt"
    assert record_format(openai(1)) == "openai"
    assert record_format(alpaca(1)) == "alpaca"
    # the turn keys decide, whichever field holds the turns
    assert record_format({"conversations": [{"role": "user", "content": "q"}]}) == "openai"
    assert record_format({"messages": [{"from": "human", "value": "q"}]}) == "sharegpt"
    assert record_format({"dialog": [{"from": "human", "value": "q"}]}, conversations_field="dialog") == "sharegpt"
    assert record_format({"messages": []}) == "openai" and record_format({"conversations": []}) == "sharegpt"
    assert record_format({"instruction": "only"}) is None and record_format(["not", "a", "record"]) is None


def test_an_alpaca_record_is_a_user_turn_and_an_assistant_turn():
    assert standardize({"instruction": "Sum.", "input": "2 and 3", "output": "5"}) == (
        [{"role": "user", "content": "Sum.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        None,
    )
    assert standardize({"instruction": "Say hi.", "input": "", "output": "Hi", "system": "Be kind."})[0] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi"},
    ]
    assert standardize({"instruction": "Say hi.", "output": "Hi"})[0][0] == {"role": "user", "content": "Say hi."}
    for bad in (
        {"instruction": "x", "output": ""},
        {"instruction": "", "output": "y"},
        {"instruction": "x", "input": 3, "output": "y"},
        {"instruction": None, "output": "y"},
    ):
        assert standardize(bad) == (None, "empty_content"), bad


def test_a_named_format_drops_the_others_with_a_reason_of_their_own():
    assert standardize(alpaca(1), fmt="alpaca")[1] is None
    assert standardize(sharegpt(1), fmt="alpaca") == (None, "wrong_format")
    assert standardize(openai(1), fmt="sharegpt") == (None, "wrong_format")
    assert standardize(sharegpt(1), fmt="openai") == (None, "wrong_format")
    assert standardize(openai(1), fmt="openai")[1] is None
    assert "wrong_format" in DROP_REASONS


@pytest.mark.parametrize("role", ["tool", "ipython", "function", "observation", "Tool"])
def test_tool_turns_are_read_as_tool(role):
    record = tool(1)
    record["messages"][2]["role"] = role
    messages, why = standardize(record)
    assert why is None and [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize(
    "roles, reason",
    [
        (["user", "tool", "assistant"], "not_alternating"),  # a tool answers an assistant, not a user
        (["tool", "assistant"], "not_alternating"),
        (["user", "assistant", "tool"], "ends_with_tool"),
        (["user", "assistant", "tool", "user", "assistant"], "not_alternating"),
    ],
)
def test_tool_turns_out_of_place_are_dropped(roles, reason):
    record = {"messages": [{"role": r, "content": f"turn {i}"} for i, r in enumerate(roles)]}
    assert standardize(record) == (None, reason) and reason in DROP_REASONS
    ok = {"messages": [{"role": r, "content": "x"} for r in ["user", "assistant", "tool", "tool", "assistant"]]}
    assert standardize(ok)[1] is None  # two tool answers in a row, then the assistant


def test_structured_tool_calls_are_dropped_with_their_own_reason():
    record = tool(1)
    record["messages"][1] = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}
    assert standardize(record) == (None, "tool_calls")
    record["messages"][1] = {"role": "assistant", "content": "", "function_call": {"name": "weather"}}
    assert standardize(record) == (None, "tool_calls")


def test_mixed_formats_through_the_data_step(tmp_path, smol_tokenizer):
    """ShareGPT, OpenAI messages, Alpaca and tool conversations in one JSONL: all read, counted per format in the
    data report; the Alpaca turns and the tool turns are rendered, and only assistant text is trained."""
    tok, name = smol_tokenizer
    records = [sharegpt(i) for i in range(20)] + [openai(i) for i in range(12)] + [alpaca(i) for i in range(8)]
    records += [tool(i) for i in range(4)] + [{"instruction": "no output"}]
    src = write_jsonl(tmp_path / "mixed.jsonl", records)
    cfg = DataConfig(source=src, validation_fraction=0.0, test_fraction=0.0, max_length=256)
    prepared = prepare(tok, name, cfg, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["formats"] == {"sharegpt": 20, "openai": 16, "alpaca": 8}
    assert report["dropped"] == {"malformed": 1} and report["clean"] == 44
    md = (tmp_path / "out" / "data_report.md").read_text()
    assert "- formats: mixed, sharegpt 20, openai 16, alpaca 8 records (data.format: auto)" in md
    train = {c.id: c for c in prepared.conversations["train"]}
    assert train["32"].messages == [
        {"role": "user", "content": "Add 0 and 1.\n\nShow the sum 0."},
        {"role": "assistant", "content": "1"},
    ]
    assert renders_tool_turns(tok)
    eot = template_info(tok, name).end_of_turn
    by_id = {e.id: e for e in prepared.encoded["train"]}
    for cid in ("40", "41", "42", "43"):  # tool conversations: kept, the tool's answer in the input, not trained
        e = by_id[cid]
        assert '"sky": "clear"' in tok.decode(e.input_ids)
        trained = tok.decode([i for i, lab in zip(e.input_ids, e.labels, strict=True) if lab != -100])
        assert trained == "".join(m["content"] + eot for m in train[cid].messages if m["role"] == "assistant")


def test_a_template_that_writes_tool_turns_as_json_drops_them_with_a_reason(tmp_path, llama31_tokenizer):
    """tunebench's llama-3.1 writes a tool turn under `ipython` as a JSON string (quoted, escaped): its text cannot be
    located, so those conversations are dropped as tool_turn_not_rendered; the others are kept."""
    tok = llama31_tokenizer
    assert not renders_tool_turns(tok)
    text = tok.apply_chat_template(tool(1)["messages"], tokenize=False)
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"city\\": 1' in text
    src = write_jsonl(tmp_path / "tools.jsonl", [sharegpt(i) for i in range(30)] + [tool(i) for i in range(5)])
    prepare(tok, "llama-3.1", DataConfig(source=src, validation_fraction=0.0, test_fraction=0.0), tmp_path / "out")
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["dropped"]["tool_turn_not_rendered"] == 5 and report["clean"] == 30
    assert "tool_turn_not_rendered" in (tmp_path / "out" / "data_report.md").read_text()


@pytest.mark.parametrize(
    "fmt, filename, records, found",
    [
        ("auto", "alpaca.json", [alpaca(i) for i in range(40)], "- format: alpaca (40 records; data.format: auto)"),
        (
            "alpaca",
            "alpaca.jsonl",
            [alpaca(i) for i in range(40)],
            "- format: alpaca (40 records; data.format: alpaca)",
        ),
        ("openai", "chat.jsonl", [openai(i) for i in range(40)], "- format: openai (40 records; data.format: openai)"),
        (
            "sharegpt",
            "chat.jsonl",
            [sharegpt(i) for i in range(40)],
            "- format: sharegpt (40 records; data.format: sharegpt)",
        ),
    ],
)
def test_each_format_through_tunebench_data_on_the_packaged_model(tmp_path, capsys, fmt, filename, records, found):
    """`tunebench data smoke data.source=FILE data.format=...`: the packaged SmolLM2's tokenizer, a JSON array
    (Alpaca's own form) or JSON Lines file; the report says which format it read."""
    src = tmp_path / filename
    if filename.endswith(".json"):
        src.write_text(json.dumps(records, indent=1))
    else:
        write_jsonl(src, records)
    assert cli.main(["data", "smoke", f"data.source={src}", f"data.format={fmt}", "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "data" / "data_report.json").read_text())
    assert report["clean"] == 40 and report["dropped"].get("malformed", 0) == 0
    assert found in capsys.readouterr().out and found in render_report(report)


def test_a_named_format_on_other_records_drops_them_all_with_a_clear_error(tmp_path, capsys):
    src = write_jsonl(tmp_path / "chat.jsonl", [sharegpt(i) for i in range(40)])
    assert cli.main(["data", "smoke", f"data.source={src}", "data.format=alpaca", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "wrong_format=40" in err and "data.format" in err and "Traceback" not in err


def test_a_misspelt_format_is_refused_with_a_did_you_mean(capsys):
    assert cli.main(["config", "smoke", "data.format=sharegtp"]) == 2
    err = capsys.readouterr().err
    assert "data.format" in err and "did you mean 'sharegpt'" in err


def test_the_conversations_field_still_names_the_turns(tmp_path, smol_tokenizer):
    tok, name = smol_tokenizer
    records = [{"dialog": sharegpt(i)["conversations"], "conversations": "not turns"} for i in range(30)]
    src = write_jsonl(tmp_path / "d.jsonl", records)
    cfg = DataConfig(source=src, conversations_field="dialog", validation_fraction=0.0, test_fraction=0.0)
    prepared = prepare(tok, name, cfg, None)
    assert prepared.report["formats"] == {"sharegpt": 30} and prepared.report["clean"] == 30


def test_a_report_written_before_formats_were_counted_renders_as_before(tmp_path, smol_tokenizer):
    tok, name = smol_tokenizer
    src = write_jsonl(tmp_path / "d.jsonl", [sharegpt(i) for i in range(30)])
    report = prepare(tok, name, DataConfig(source=src, validation_fraction=0.0, test_fraction=0.0), None).report
    old = {k: v for k, v in report.items() if k != "formats"}
    line = "- format: sharegpt (30 records; data.format: auto)\n"
    assert line in render_report(report) and render_report(old) == render_report(report).replace(line, "")


def test_encoding_a_tool_conversation_labels_only_assistant_text(smol_tokenizer):
    tok, name = smol_tokenizer
    info = template_info(tok, name)
    messages, _ = standardize(tool(7))
    e = encode(tok, Conversation("t", messages), info.end_of_turn)
    rendered = tok.decode(e.input_ids)
    assert "<|im_start|>tool\n" in rendered
    trained = tok.decode([i for i, lab in zip(e.input_ids, e.labels, strict=True) if lab != -100])
    assert trained == "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
