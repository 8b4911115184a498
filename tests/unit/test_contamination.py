"""Train/eval n-gram overlap: planted copies are found, paraphrases are not, and the report adds up."""

from __future__ import annotations

import pytest

from tunebench.evals import contamination as contam
from tunebench.evals.contamination import MIN_SHINGLE_WORDS, contamination, conversation_text, words

ITEM = (
    "The lighthouse keeper counted forty seven ships passing the northern rocks during the long "
    "winter storm of that unusual year"
)  # 20 words: 8 13-grams
FILLER = "Lorem ipsum dolor sit amet and other unrelated words about cooking pasta at home. " * 3


def test_words_lowercase_and_strip_punctuation():
    assert words("Hello, World! It's 3.5 km-long.") == ["hello", "world", "it", "s", "3", "5", "km", "long"]


def test_conversation_text_joins_turn_contents():
    msgs = [
        {"role": "user", "content": "Hi there"},
        {"from": "gpt", "value": "Hello!"},
        {"role": "user", "content": ""},
    ]
    assert conversation_text(msgs) == "Hi there\nHello!"


def test_copied_item_is_flagged_with_full_overlap():
    train = [FILLER, FILLER + ITEM.upper().replace(" ", ",  ") + " " + FILLER]  # case and punctuation differ
    report = contamination(train, {"probe": [("a", ITEM), ("b", "nothing in common with training " * 3)]})
    s = report["sets"]["probe"]
    assert (s["items"], s["checked"], s["contaminated"]) == (2, 2, 1)
    assert s["share"] == pytest.approx(0.5)
    [row] = s["worst"]
    assert row["id"] == "a"
    assert row["matched"] == row["ngrams"] == len(words(ITEM)) - 13 + 1
    assert row["fraction"] == 1.0
    assert row["example"] in " ".join(words(ITEM)) and len(row["example"].split()) == 13
    assert report["train_texts"] == 2 and report["n"] == 13


def test_paraphrase_without_a_shared_13_gram_is_not_flagged():
    w = words(ITEM)
    # change every 12th word: every 13-word window of the item now holds one changed word
    paraphrase = " ".join("CHANGED" if i % 12 == 11 else x for i, x in enumerate(w))
    report = contamination([paraphrase], {"probe": [("a", ITEM)]})
    assert report["sets"]["probe"]["contaminated"] == 0
    assert report["sets"]["probe"]["worst"] == []
    # exactly 13 words in common is enough
    report = contamination([" ".join(w[3:16])], {"probe": [("a", ITEM)]})
    [row] = report["sets"]["probe"]["worst"]
    assert row["matched"] == 1 and row["example"] == " ".join(w[3:16])


def test_share_and_worst_ordering():
    w = words(ITEM)
    other = (
        "A small red bicycle leaned against the bakery wall while two children argued about "
        "the price of warm bread rolls"
    )
    ow = words(other)
    train = [" ".join(w[:14]), " ".join(ow)]  # ITEM: 2 of its 8 n-grams; other: all of them
    items = [
        ("item", ITEM),
        ("other", other),
        ("clean", "completely different text " * 5),
        ("tiny", "too short"),
        ("clean2", "yet another unrelated sentence about rivers " * 3),
    ]
    s = contamination(train, {"set": items}, worst=1)["sets"]["set"]
    assert s["items"] == 5 and s["checked"] == 4 and s["too_short"] == 1 and s["too_short_ids"] == ["tiny"]
    assert s["contaminated"] == 2 and s["share"] == pytest.approx(0.5)
    assert [r["id"] for r in s["worst"]] == ["other"]  # worst=1 keeps the most overlapping only
    s = contamination(train, {"set": items}, worst=5)["sets"]["set"]
    assert [r["id"] for r in s["worst"]] == ["other", "item"]
    assert s["worst"][1]["matched"] == 2 and s["worst"][1]["fraction"] == pytest.approx(2 / 8)


def test_short_items_are_one_shingle_or_too_short():
    nine = "one two three four five six seven eight nine"
    five = "alpha beta gamma delta epsilon"
    train = [f"before {nine} after", f"x {five} y"]
    s = contamination(train, {"s": [("nine", nine), ("five", five)]})["sets"]["s"]
    assert s["checked"] == 1 and s["too_short_ids"] == ["five"]
    [row] = s["worst"]
    assert row["id"] == "nine" and row["ngrams"] == 1 and row["example"] == nine
    # only 8 of its 9 words in training: not a match
    s = contamination(["one two three four five six seven eight"], {"s": [("nine", nine)]})["sets"]["s"]
    assert s["contaminated"] == 0
    assert MIN_SHINGLE_WORDS == 8


def test_no_ngram_spans_two_training_texts():
    w = words(ITEM)
    report = contamination([" ".join(w[:10]), " ".join(w[10:])], {"p": [("a", ITEM)]})
    assert report["sets"]["p"]["contaminated"] == 0


def test_chunked_scan_gives_the_same_answer(monkeypatch):
    train = [FILLER] * 50 + [FILLER + ITEM] + [FILLER] * 50
    whole = contamination(train, {"p": [("a", ITEM)]})
    monkeypatch.setattr(contam, "CHUNK_WORDS", 37)  # many chunk boundaries, one inside the planted copy's text
    chunked = contamination(iter(train), {"p": [("a", ITEM)]})
    assert chunked == whole
    assert whole["sets"]["p"]["contaminated"] == 1


def test_empty_inputs_and_bad_arguments():
    report = contamination([], {"p": [("a", ITEM)], "empty": []})
    assert report["sets"]["p"]["contaminated"] == 0 and report["train_texts"] == 0
    assert report["sets"]["empty"]["share"] is None
    with pytest.raises(ValueError, match="below 8"):
        contamination([ITEM], {"p": [("a", ITEM)]}, n=5)
