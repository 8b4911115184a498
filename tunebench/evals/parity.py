"""Parity of an artifact with the adapter it was exported from, on identical test tokens.

Like ``llama-perplexity --kl-divergence``: at every scored position of the run's test split (the assistant
tokens perplexity scores), the adapter's next-token distribution P (transformers + peft, in process) against
the artifact's Q (llama.cpp's logits), both from the same token ids:

- ``parity/kl_mean``: mean per-token KL(P || Q), nats; items per conversation (num = summed KL, den = tokens);
- ``parity/kl_p99``: the 99th percentile of per-token KL, bootstrap interval over conversations;
- ``parity/top1_agree``: share of positions where both argmaxes agree;
- ``parity/ppl_ratio``: artifact perplexity / adapter perplexity (items: NLL difference per conversation).

Each metric's ``details["reference"]`` is the value of a perfect copy (0, 0, 1, 1): the export comparison
pairs the artifact against it, so gate rules bound parity like any other metric.

The adapter's side reuses the tuned evaluation's pass over the same tokens: that evaluation saves the final hidden
states at the scored positions (``HIDDEN_FILE``, the LM head's input; a full vocabulary per token would be 1.4 GB
for the smoke preset's test split), and parity applies the adapter's head to them instead of running the whole
model again. It does so only when the file was written for the model parity loads (same base, adapter weights,
merge, dtype and device) and the same token ids; otherwise it runs the forward pass itself.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from tunebench.core.config_schema import EvalConfig
from tunebench.core.io import atomic_write_bytes, fingerprint
from tunebench.core.stats import bootstrap_ci
from tunebench.data.encode import Encoded, tokens_fingerprint
from tunebench.evals.families import MetricShape
from tunebench.evals.llamacpp import PARITY_METRICS, _logsumexp, scored_positions
from tunebench.evals.results import Metric

log = logging.getLogger(__name__)

P99 = 0.99
HIDDEN_FILE = "scored_hidden.safetensors"
"""Beside an adapter's results.json: its final hidden states at the test split's scored positions."""


def adapter_logprobs(loaded: Any, e: Encoded) -> Any:
    """The transformers model's log-probs (float64, numpy) at the scored positions of one conversation."""
    import numpy as np
    import torch  # heavy: torch

    pos, _ = scored_positions(e)
    if not pos:
        return np.zeros((0, 1))
    with torch.inference_mode():
        ids = torch.tensor([e.input_ids], device=loaded.device)
        logits = loaded.model(input_ids=ids).logits[0, pos].double().cpu().numpy()
    return logits - _logsumexp(logits)


def _hidden_key(identity: dict[str, Any], encoded: list[Encoded]) -> str:
    """What saved hidden states were computed from: the loaded model (``Loaded.identity``: the base's content, the
    adapter's weights, how it was applied, dtype, device; not where the files are, so a copied run folder keeps
    them) and the token ids."""
    fields = ("adapter_sha256", "adapter_merged", "adapter_base", "dtype", "device", "weights")
    model = {k: identity.get(k) for k in fields}
    return fingerprint([(identity.get("base") or {}).get("identity"), model, tokens_fingerprint(encoded)])


def save_scored_hidden(
    path: str | Path, hidden: dict[int, Any], encoded: list[Encoded], identity: dict[str, Any]
) -> bool:
    """Write ``hidden`` (``perplexity.score``'s, one tensor per conversation of ``encoded``) to ``path`` atomically,
    keyed by the model's ``identity`` and the token ids; when ``hidden`` lacks a conversation (score kept none), remove
    an older file instead.

    Returns:
        Whether the file was written.
    """
    import torch  # heavy: torch
    from safetensors.torch import save  # heavy: safetensors

    if not encoded or len(hidden) != len(encoded):
        Path(path).unlink(missing_ok=True)
        return False
    rows = [hidden[i] for i in range(len(encoded))]
    counts = torch.tensor([0] + [len(t) for t in rows], dtype=torch.int64).cumsum(0)
    blob = save({"hidden": torch.cat(rows).contiguous(), "offsets": counts}, {"key": _hidden_key(identity, encoded)})
    atomic_write_bytes(path, blob)
    return True


def saved_adapter_logprobs(path: str | Path, loaded: Any, encoded: list[Encoded]) -> list[Any] | None:
    """The adapter's log-probs at the scored positions (float64 numpy, one array per conversation) from the hidden
    states a tuned evaluation saved at ``path``, through ``loaded``'s LM head; None when there is no such file, it
    is unreadable, or it was written for another model or other token ids."""
    import numpy as np
    import torch  # heavy: torch
    from safetensors import SafetensorError, safe_open  # heavy: safetensors

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            key = (f.metadata() or {}).get("key")
            hidden, offsets = f.get_tensor("hidden"), f.get_tensor("offsets").tolist()
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        log.warning("%s is unreadable (%s): parity runs the adapter's forward pass itself", path, e)
        return None
    if key != _hidden_key(loaded.identity(), encoded) or len(offsets) != len(encoded) + 1:
        return None
    head = loaded.model.get_output_embeddings()
    out = []
    with torch.inference_mode():
        for a, b in zip(offsets, offsets[1:], strict=False):
            if b == a:
                out.append(np.zeros((0, 1)))
                continue
            logits = head(hidden[a:b].to(loaded.device)).double().cpu().numpy()
            out.append(logits - _logsumexp(logits))
    return out


def token_parity(p: Any, q: Any, targets: list[int]) -> dict[str, Any]:
    """Per-token KL(P || Q), argmax agreement and both NLLs for one conversation's scored positions."""
    import numpy as np

    v = min(p.shape[1], q.shape[1])  # a padded embedding (more rows than the vocabulary) has no tokens there
    p, q = p[:, :v], q[:, :v]
    p = p - _logsumexp(p)
    q = q - _logsumexp(q)
    kl = (np.exp(p) * (p - q)).sum(axis=1)
    rows = np.arange(len(targets))
    return {
        "kl": np.maximum(kl, 0.0),
        "agree": int((p.argmax(1) == q.argmax(1)).sum()),
        "nll_p": -float(p[rows, targets].sum()),
        "nll_q": -float(q[rows, targets].sum()),
    }


def parity_metrics(
    encoded: list[Encoded],
    adapter_lp: list[Any],
    artifact_lp: list[Any],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[tuple[Metric, list[dict[str, Any]] | None]]:
    """The four parity metrics (see the module docstring) with their per-conversation items."""
    import numpy as np

    per = [token_parity(p, q, scored_positions(e)[1]) for e, p, q in zip(encoded, adapter_lp, artifact_lp, strict=True)]
    kl_items = [
        {"id": e.id, "num": float(x["kl"].sum()), "den": len(x["kl"])} for e, x in zip(encoded, per, strict=True)
    ]
    top_items = [{"id": e.id, "num": float(x["agree"]), "den": len(x["kl"])} for e, x in zip(encoded, per, strict=True)]
    ratio_items = [
        {"id": e.id, "num": x["nll_q"] - x["nll_p"], "den": len(x["kl"])} for e, x in zip(encoded, per, strict=True)
    ]
    tokens = sum(i["den"] for i in kl_items)
    common = {"unit": "conversations", "group": "parity", "n": len(encoded)}

    def from_items(name: str, items: list[dict[str, Any]], how: str, hib: bool, ref: float, doc: str) -> tuple:
        num, den = sum(i["num"] for i in items), sum(i["den"] for i in items)
        value = math.exp(num / den) if how == "exp_ratio" else num / den
        ci = bootstrap_ci(items, how, n_boot=n_boot, alpha=alpha, seed=seed)
        return (
            Metric(
                name=name,
                value=value,
                higher_is_better=hib,
                ci_low=ci.low,
                ci_high=ci.high,
                ci_method=f"bootstrap over conversations ({n_boot} resamples, percentile)",
                aggregate=how,
                details={"reference": ref, "scored_tokens": tokens, "what": doc},
                **common,
            ),
            items,
        )

    all_kl = np.concatenate([x["kl"] for x in per]) if per else np.zeros(0)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(min(n_boot, 1000)):  # p99 is no sum over items: resample conversations, recompute it
        pick = rng.integers(0, len(per), len(per))
        sample = np.concatenate([per[k]["kl"] for k in pick])
        boots.append(float(np.quantile(sample, P99)) if sample.size else 0.0)
    p99 = Metric(
        name="parity/kl_p99",
        value=float(np.quantile(all_kl, P99)) if all_kl.size else 0.0,
        higher_is_better=False,
        ci_low=float(np.quantile(boots, alpha / 2)),
        ci_high=float(np.quantile(boots, 1 - alpha / 2)),
        ci_method=f"bootstrap over conversations ({len(boots)} resamples, percentile)",
        details={
            "reference": 0.0,
            "scored_tokens": tokens,
            "kl_max": float(all_kl.max()) if all_kl.size else 0.0,
            "what": "99th percentile of per-token KL",
        },
        **common,
    )
    return [
        from_items("parity/kl_mean", kl_items, "mean", False, 0.0, "mean per-token KL(adapter || artifact), nats"),
        (p99, None),
        from_items("parity/top1_agree", top_items, "mean", True, 1.0, "share of positions with the same argmax"),
        from_items("parity/ppl_ratio", ratio_items, "exp_ratio", False, 1.0, "artifact / adapter perplexity"),
    ]


def reference_side(metric: Metric, items: list[dict[str, Any]] | None) -> tuple[Metric, list[dict[str, Any]] | None]:
    """A perfect copy's metric and items (``details["reference"]`` on the same ids), to pair the artifact with."""
    ref = float(metric.details["reference"])
    ref_items = None
    if items is not None:
        per_den = math.log(ref) if metric.aggregate == "exp_ratio" else ref
        ref_items = [{"id": i["id"], "num": per_den * i["den"], "den": i["den"]} for i in items]
    return Metric(
        name=metric.name,
        value=ref,
        higher_is_better=metric.higher_is_better,
        n=metric.n,
        unit=metric.unit,
        ci_low=ref,
        ci_high=ref,
        stderr=0.0,
        aggregate=metric.aggregate,
        group=metric.group,
        items=metric.items,
        details=dict(metric.details),
    ), ref_items


def produced(settings: EvalConfig) -> list[MetricShape]:
    """The family's metrics (evals.families): an artifact scored in llama.cpp against the adapter."""
    higher = {"parity/top1_agree"}  # agreement; the rest are distances from a perfect copy (parity_metrics)
    return [MetricShape(tuple(name.split("/")), False, name in higher) for name in PARITY_METRICS]
