"""Meta's Llama 3 tokenizer converted from llama-models' tiktoken file: the same ids as tiktoken on real text,
Meta's special tokens at their ids, the llama-3.1 template's assistant mask exactly over assistant text, and
ChatML's end-of-turn (no token of Llama 3's) trained whole, equal to Unsloth's own mask."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunebench.data.encode import encode, template_info
from tunebench.data.standardize import Conversation, standardize
from tunebench.models.llama3_tokenizer import VOCAB_SIZE, convert, is_llama3_tokenizer, special_tokens

pytestmark = pytest.mark.slow  # Meta's tokenizer converted and Unsloth's masks computed: ~40 s


@pytest.fixture(scope="module")
def tok(llama3_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llama3_tokenizer_dir), clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def meta():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


@pytest.fixture(scope="module")
def conversations(packaged_raw):
    convs = []
    for i, r in enumerate(packaged_raw.records[:1500]):
        messages, why = standardize(r)
        if why is None:
            convs.append(Conversation(id=str(i), messages=messages))
    return convs[:300]


def test_encoding_equals_tiktoken_on_real_texts(tok, meta, conversations):
    texts = [m["content"] for c in conversations for m in c.messages][:600]
    assert len(texts) >= 300 and sum(len(t) for t in texts) > 100_000
    for text in texts:
        ours = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert ours == meta.model.encode(text, disallowed_special=()), text[:200]
        assert tok.decode(ours) == text
    # BOS is prepended exactly as Meta's encode(bos=True) does
    assert tok("Hello world")["input_ids"] == meta.encode("Hello world", bos=True, eos=False)


def test_special_tokens_sit_at_metas_ids(tok, meta):
    assert len(tok) == VOCAB_SIZE == meta.n_words and is_llama3_tokenizer(tok)
    names = special_tokens()
    assert len(names) == 256 and len(set(names)) == 256 and names[-1] == "<|reserved_special_token_247|>"
    named = {n: i for n, i in meta.special_tokens.items() if "reserved" not in n}
    assert set(named) - set(names) == {"<|step_id|>", "<|image|>"}  # llama-models 0.3.0's names for 128005/128011
    assert all(tok.convert_tokens_to_ids(n) == i for n, i in named.items() if n in names)
    # the reserved ones are numbered as the hub's Llama 3.1/3.2 tokenizer.json numbers them
    assert tok.convert_ids_to_tokens([128002, 128003, 128005, 128011, 128012, 128255]) == [
        f"<|reserved_special_token_{i}|>" for i in (0, 1, 2, 3, 4, 247)
    ]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
    )
    assert tok.convert_tokens_to_ids(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]) == [
        128006,
        128007,
        128009,
    ]


def test_llama31_mask_decodes_to_exactly_the_assistant_texts_plus_eot(tok, conversations):
    info = template_info(tok, "llama-3.1")
    assert info.end_of_turn == "<|eot_id|>"
    assert info.response_part == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    for conv in conversations[:200]:
        enc = encode(tok, conv, info.end_of_turn)
        runs, run = [], []
        for i, lab in zip(enc.input_ids, enc.labels, strict=True):
            if lab != -100:
                run.append(i)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        expected = [m["content"] + "<|eot_id|>" for m in conv.messages if m["role"] == "assistant"]
        assert [tok.decode(r) for r in runs] == expected, conv.id


def test_a_file_that_is_not_llama3s_is_refused(tmp_path):
    from tunebench.core.errors import ModelError

    bad = tmp_path / "tokenizer.model"
    bad.write_text("aGk= 0\n")  # a valid tiktoken file with a single rank
    with pytest.raises(ModelError, match="expected 128,256"):
        convert(bad)


def test_benchmark_shapes_count_tokens_with_it(llama3_tokenizer_dir):
    """A tokenizer folder written by `bench export-tokenizer` is used as it is for the llama-3.2 shapes."""
    from tunebench.bench.shapes import shape_config, shape_tokenizer

    tok, note = shape_tokenizer(llama3_tokenizer_dir)
    assert is_llama3_tokenizer(tok) and note.startswith("Llama 3")
    cfg = shape_config("llama-3.2-1b", tok)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.vocab_size) == (128000, 128009, 128004, len(tok))
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def _runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The labelled stretches of a sequence (each one trained span)."""
    runs, run = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != -100:
            run.append(i)
        elif run:
            runs.append(run)
            run = []
    return runs + [run] if run else runs


UNSLOTH_MASKS = """
import json, sys
import unsloth  # noqa: F401  (patches transformers first, as in training)
from unsloth.chat_templates import train_on_responses_only
from transformers import AutoTokenizer
out = {}
for case, job in json.load(open(sys.argv[1])).items():
    tok = AutoTokenizer.from_pretrained(job["tokenizer"])
    mask = train_on_responses_only(
        None, instruction_part=job["instruction_part"], response_part=job["response_part"], tokenizer=tok,
        return_function=True,
    )
    out[case] = mask({"input_ids": job["input_ids"]})["labels"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def unsloth_masks(llama3_tokenizer_dir, smol_source, smol_tokenizer, conversations, tmp_path_factory):
    """Our encodings of 200 real conversations for three tokenizer/template pairs, and the labels that Unsloth's
    own ``train_on_responses_only`` (unsloth 2026.10.9, in its own process, on CPU) gives the same token ids with
    the markers we derive: what the unsloth backend runs in training (``finish_trainer``)."""
    from transformers import AutoTokenizer

    from tunebench.data.encode import encode_many
    from tunebench.models.loading import template_text

    ours, jobs = {}, {}
    for case, path in (("llama3-chatml", llama3_tokenizer_dir), ("llama3-llama-3.1", llama3_tokenizer_dir)):
        tok = AutoTokenizer.from_pretrained(str(path), clean_up_tokenization_spaces=False)
        tok.chat_template = template_text(case.removeprefix("llama3-"))
        ours[case] = (tok, template_info(tok, case.removeprefix("llama3-")))
    ours["smollm2-chatml"] = (smol_tokenizer[0], template_info(*smol_tokenizer))
    for case, (tok, info) in ours.items():
        encoded = encode_many(tok, conversations[:200], info.end_of_turn)
        ours[case] = (tok, info, encoded)
        jobs[case] = {
            "tokenizer": str(smol_source.path if case.startswith("smollm2") else llama3_tokenizer_dir),
            "instruction_part": info.instruction_part,
            "response_part": info.response_part,
            "input_ids": [e.input_ids for e in encoded],
        }
    src = tmp_path_factory.mktemp("unsloth-masks") / "jobs.json"
    src.write_text(json.dumps(jobs))
    out = subprocess.run([sys.executable, "-c", UNSLOTH_MASKS, str(src)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return ours, json.loads(out.stdout.strip().splitlines()[-1])


def test_chatml_end_marker_is_trained_whole_and_equals_unsloths_mask(unsloth_masks, conversations):
    """Llama 3's vocabulary has no <|im_end|>: ChatML's end-of-turn is six ordinary tokens ('<', '|', 'im', '_end',
    '|', '>\\n'), and the mask trains them all, token for token as Unsloth's train_on_responses_only does."""
    ours, theirs = unsloth_masks
    tok, info, encoded = ours["llama3-chatml"]
    assert (info.end_of_turn, info.instruction_part, info.response_part) == (
        "<|im_end|>\n",
        "<|im_start|>user\n",
        "<|im_start|>assistant\n",
    )
    assert len(tok(info.end_of_turn, add_special_tokens=False)["input_ids"]) == 6
    assert [e.labels for e in encoded] == theirs["llama3-chatml"]
    for e, conv in zip(encoded, conversations[:200], strict=True):
        runs = [tok.decode(r) for r in _runs(e.input_ids, e.labels)]
        assert runs == [m["content"] + "<|im_end|>\n" for m in conv.messages if m["role"] == "assistant"], e.id


@pytest.mark.parametrize("case", ["llama3-llama-3.1", "smollm2-chatml"])
def test_one_token_end_markers_are_unchanged_and_equal_unsloths_mask(unsloth_masks, case):
    ours, theirs = unsloth_masks
    tok, info, encoded = ours[case]
    assert info.end_of_turn == {"llama3-llama-3.1": "<|eot_id|>", "smollm2-chatml": "<|im_end|>"}[case]
    assert len(tok(info.end_of_turn, add_special_tokens=False)["input_ids"]) == 1
    assert [e.labels for e in encoded] == theirs[case]
