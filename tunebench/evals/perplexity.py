"""Held-out perplexity over assistant tokens (the shared mask), batched and sorted by length.

The LM head runs only on positions that are scored, in chunks, so full-vocabulary logits are never
materialized for a whole batch: on a 128k vocabulary that is most of the memory and much of the time.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from tunebench.core import dist, output
from tunebench.core.config_schema import EvalConfig
from tunebench.core.errors import DataError
from tunebench.core.shards import Shard
from tunebench.core.stats import bootstrap_ci
from tunebench.data.encode import Encoded, tokens_fingerprint
from tunebench.evals.families import MetricShape
from tunebench.evals.results import Metric

log = logging.getLogger(__name__)

HEAD_CHUNK = 4096  # scored positions per LM-head matmul: bounds the fp32 logits buffer to HEAD_CHUNK x vocab
MAX_KEPT_HIDDEN_BYTES = 64 << 20
"""``score(scored_hidden=...)`` keeps at most this much (the smoke preset's test split takes 16 MB); a larger pass
(a 1B model on a large test split) keeps none, and parity runs the model itself, on the GPU such runs have."""


def batches_by_length(encoded: list[Encoded], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that (longest in batch) x (batch size) stays within ``batch_tokens``."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = len(encoded[cur[0]].input_ids) if cur else len(encoded[i].input_ids)
        if cur and longest * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix, None)
    head = base.get_output_embeddings()
    if backbone is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return None, None
    return backbone, head


def _padded(rows: list[Encoded], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    """(input ids, labels, attention mask) of ``rows``, right-padded to the longest, on ``device``."""
    import torch

    width = max(len(e.input_ids) for e in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, e in enumerate(rows):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        mask[r, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def score(
    model: Any,
    encoded: list[Encoded],
    batch_tokens: int = 16384,
    pad_id: int = 0,
    progress: bool = True,
    scored_hidden: dict[int, Any] | None = None,
    shard: Shard | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Summed NLL and scored-token count per conversation.

    Args:
        scored_hidden: filled, when given, with each conversation's final hidden states at its scored positions
            (index in ``encoded`` -> a CPU tensor, the LM head's input): what parity needs of this pass
            (evals.parity). Left empty where the head is more than a matmul, the batches are split across processes,
            or they would take more than ``MAX_KEPT_HIDDEN_BYTES``.
        shard: score only this shard's batches of the plan an unsharded run makes (``core.shards``).

    Returns:
        (items, seconds) with items ``{"id", "num": summed NLL (nats), "den": assistant tokens}`` in input order.
    """
    import torch  # heavy: torch, imported when needed

    device = next(model.parameters()).device
    backbone, head = _backbone_and_head(model)
    items: list[dict[str, Any] | None] = [None] * len(encoded)
    groups = [g for b, g in enumerate(batches_by_length(encoded, batch_tokens)) if shard is None or shard.owns_batch(b)]
    # under torchrun each process scores whole batches (the same batches one process would), so the
    # gathered records equal a single-process run
    mine = [groups[g] for g in dist.shard(len(groups))]
    keep = scored_hidden is not None and shard is None and backbone is not None and dist.world_size() == 1
    kept_bytes = 0
    t0 = time.perf_counter()
    bar = output.bar(
        total=sum(len(encoded[i].input_ids) for g in mine for i in g),
        desc="perplexity",
        unit="tok",
        disable=not progress or not dist.is_main(),
        leave=False,
    )
    with torch.inference_mode():
        for group in mine:
            ids, labels, mask = _padded([encoded[i] for i in group], pad_id, device)
            target = labels[:, 1:]
            scored = target != -100
            if backbone is not None:
                hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
                h = hidden[scored]
                t = target[scored]
                nll = torch.empty(t.shape[0], dtype=torch.float32, device=device)
                for s in range(0, t.shape[0], HEAD_CHUNK):
                    logits = head(h[s : s + HEAD_CHUNK]).float()
                    nll[s : s + HEAD_CHUNK] = torch.nn.functional.cross_entropy(
                        logits, t[s : s + HEAD_CHUNK], reduction="none"
                    )
            else:  # models whose head does more than a matmul: full logits, still batched
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits[scored], target[scored], reduction="none")
            per_row = torch.zeros(len(group), dtype=torch.float64, device=device)
            row_index = torch.arange(len(group), device=device).unsqueeze(1).expand_as(target)[scored]
            per_row.index_add_(0, row_index, nll.double())
            counts = scored.sum(dim=1)
            if keep:
                for i, rows in zip(group, torch.split(h, counts.tolist()), strict=True):
                    scored_hidden[i] = rows.cpu().clone()
                kept_bytes += h.numel() * h.element_size()
                if kept_bytes > MAX_KEPT_HIDDEN_BYTES:
                    keep = False
                    scored_hidden.clear()
            for r, i in enumerate(group):
                items[i] = {"id": encoded[i].id, "num": float(per_row[r]), "den": int(counts[r])}
            bar.update(sum(len(encoded[i].input_ids) for i in group))
    bar.close()
    if dist.world_size() > 1:
        for part in dist.gather({i: x for i, x in enumerate(items) if x is not None}):
            for i, x in part.items():
                items[i] = x
    return [x for x in items if x is not None], time.perf_counter() - t0


def evaluate(
    model: Any,
    tokenizer: Any,
    encoded: list[Encoded],
    *,
    split: str = "test",
    batch_tokens: int = 16384,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    scored_hidden: dict[int, Any] | None = None,
    shard: Shard | None = None,
) -> tuple[Metric | None, list[dict[str, Any]], dict[str, Any]]:
    """Token-weighted perplexity with a bootstrap interval over conversations.

    Args:
        scored_hidden: filled with the scored positions' final hidden states (see ``score``).
        shard: score this shard's batches only (``core.shards``): the metric covers its conversations (None when
            it has none), the inputs the whole split, as an unsharded run records them; ``tunebench merge``
            computes the metric of the whole split from every shard's items.

    Returns:
        (metric, per-conversation items, inputs fingerprint entries); the metric is None only for a shard without
        conversations.
    """

    if not encoded:
        raise DataError(f"the {split} split is empty: nothing to score (raise data.max_{split} or test_fraction)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    items, seconds = score(model, encoded, batch_tokens, pad, progress, scored_hidden=scored_hidden, shard=shard)
    if shard is None:
        return metric_from_items(items, encoded, split, n_boot=n_boot, alpha=alpha, seed=seed, seconds=seconds)
    inputs = split_inputs(encoded, split)
    if not items:
        return None, items, inputs
    mine = {i["id"] for i in items}
    metric, _, _ = metric_from_items(
        items, [e for e in encoded if e.id in mine], split, n_boot=n_boot, alpha=alpha, seed=seed, seconds=seconds
    )
    return metric, items, inputs


def split_inputs(encoded: list[Encoded], split: str = "test") -> dict[str, Any]:
    """The inputs fingerprint entries of a whole split: its tokens and how many of them are scored (the tokens
    after the first whose label is not masked, as ``score`` counts them)."""
    scored = sum(sum(label != -100 for label in e.labels[1:]) for e in encoded)
    return {f"{split}_tokens": tokens_fingerprint(encoded), f"{split}_scored_tokens": int(scored)}


def metric_from_items(
    items: list[dict[str, Any]],
    encoded: list[Encoded],
    split: str = "test",
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    seconds: float = 0.0,
    runtime: str | None = None,
) -> tuple[Metric, list[dict[str, Any]], dict[str, Any]]:
    """``perplexity/<split>`` from per-conversation NLL items (``{"id", "num", "den"}``), with a bootstrap interval
    over conversations; every runtime's (transformers, llama.cpp, an endpoint) so that theirs pair with the
    adapter's. ``runtime`` (not transformers) is recorded in the details and the log line.

    Returns:
        (metric, per-conversation items, inputs fingerprint entries)
    """
    metric = perplexity_metric(
        items,
        split,
        sum(len(e.input_ids) for e in encoded),
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        seconds=seconds,
        runtime=runtime,
    )
    inputs = {f"{split}_tokens": tokens_fingerprint(encoded), f"{split}_scored_tokens": metric.details["scored_tokens"]}
    log.info(
        "%sperplexity/%s = %.4f [%.4f, %.4f] over %d conversations, %d tokens (%.0f tok/s)",
        f"{runtime} " if runtime else "",
        split,
        metric.value,
        metric.ci_low,
        metric.ci_high,
        len(items),
        metric.details["scored_tokens"],
        metric.details["tokens_per_s"] or 0,
    )
    return metric, items, inputs


def perplexity_metric(
    items: list[dict[str, Any]],
    split: str,
    input_tokens: int,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    seconds: float = 0.0,
    runtime: str | None = None,
) -> Metric:
    """The ``perplexity/<split>`` metric of per-conversation items, in their order (the bootstrap resamples
    positions): ``metric_from_items`` and ``tunebench merge`` (the shards' items joined) both build it here.

    Args:
        input_tokens: tokens of the scored conversations (prompts included), for the throughput.
    """
    tokens = sum(i["den"] for i in items)
    nll = sum(i["num"] for i in items)
    ci = bootstrap_ci(items, "exp_ratio", n_boot=n_boot, alpha=alpha, seed=seed)
    return Metric(
        name=f"perplexity/{split}",
        value=math.exp(nll / tokens),
        higher_is_better=False,
        n=len(items),
        unit="conversations",
        ci_low=ci.low,
        ci_high=ci.high,
        ci_method=f"bootstrap over conversations ({n_boot} resamples, percentile)",
        aggregate="exp_ratio",
        group="perplexity",
        details={
            "scored_tokens": tokens,
            "input_tokens": input_tokens,
            "mean_nll": nll / tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(input_tokens / seconds, 1) if seconds > 0 else None,
            **({"runtime": runtime} if runtime else {}),
        },
    )


def produced(settings: EvalConfig) -> list[MetricShape]:
    """The family's metric (evals.families): the test split's perplexity."""
    return [MetricShape(("perplexity", "test"), open=False, higher_is_better=False)]
