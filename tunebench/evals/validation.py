"""A sweep's objective: assistant-token perplexity on the **validation** split, per conversation.

Selection reads only this split. The test split is what the chosen configuration's claim is made on (a normal
`tunebench run`), so a sweep that looked at it would make that claim optimistic: here a test split is refused,
and data a sweep prepared must hold no test conversations at all (``require_no_test``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.core.errors import DataError, InvalidInput
from tunebench.data.conversations import PreparedData
from tunebench.data.encode import encode_split, tokens_fingerprint
from tunebench.evals import perplexity
from tunebench.evals.results import Metric
from tunebench.evals.settings import EvalSettings, load_model

OBJECTIVE_SPLIT = "validation"
OBJECTIVE_METRIC = f"perplexity/{OBJECTIVE_SPLIT}"


class TestSplitRefused(InvalidInput):
    """The sweep's objective was asked to read the test split (exit code 2)."""


def require_no_test(prepared: PreparedData, where: str) -> None:
    """Refuse prepared data that holds test conversations: a sweep's data never carries the test split.

    Raises:
        TestSplitRefused: naming ``where``.
    """
    if prepared.encoded.get("test") or prepared.conversations.get("test"):
        raise TestSplitRefused(
            f"{where} holds test-split conversations; a sweep selects on the validation split "
            "only and its data must not carry the test split (prepare it again with `tunebench "
            "sweep`)"
        )


def score_validation(
    settings: EvalSettings,
    prepared: PreparedData,
    adapter: str | Path | None,
    split: str = OBJECTIVE_SPLIT,
    progress: bool = True,
) -> tuple[Metric, list[dict[str, Any]]]:
    """Perplexity of base + ``adapter`` on the prepared validation split, with one record per conversation.

    The model is loaded as `tunebench eval` loads it (merged by default, transformers without Unsloth's patches),
    and the validation conversations are encoded again with its tokenizer and checked against the data step's
    tokens, as the test split is for evaluation.

    Returns:
        (the metric with its bootstrap interval, ``{"id", "num": summed NLL, "den": tokens}`` per conversation).

    Raises:
        TestSplitRefused: ``split`` is not the validation split, or ``prepared`` carries test conversations.
        DataError: an empty validation split, or tokens that differ from the data step's.
    """
    if split != OBJECTIVE_SPLIT:
        raise TestSplitRefused(
            f"the sweep's objective reads the {OBJECTIVE_SPLIT} split only, not {split!r}: the "
            "test split is kept for the chosen configuration's one confirmation run"
        )
    require_no_test(prepared, "the sweep's prepared data")
    convs = prepared.conversations.get(OBJECTIVE_SPLIT) or []
    if not convs:
        raise DataError(
            "the validation split is empty: the sweep has nothing to select on; raise "
            "data.max_validation or data.validation_fraction"
        )
    loaded = load_model(settings, adapter)
    encoded, _ = encode_split(
        loaded.tokenizer,
        convs,
        prepared.template.end_of_turn,
        settings.max_length,
        settings.truncation,
        desc=f"encode {OBJECTIVE_SPLIT}",
    )
    want = prepared.report["splits"][OBJECTIVE_SPLIT]["fingerprint"]
    if tokens_fingerprint(encoded) != want:
        raise DataError(
            f"the validation split encodes to other tokens than the sweep's data step recorded "
            f"({tokens_fingerprint(encoded)} != {want}): the tokenizer or chat template changed"
        )
    metric, items, _ = perplexity.evaluate(
        loaded.model,
        loaded.tokenizer,
        encoded,
        split=OBJECTIVE_SPLIT,
        batch_tokens=settings.eval.ppl_batch_tokens,
        n_boot=settings.eval.bootstrap_samples,
        alpha=settings.alpha,
        progress=progress,
    )
    return metric, items
