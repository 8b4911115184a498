"""The targets of ``bench eval``, per shape, read from its rows: an adapter costs little throughput, the suite's
generation keeps up with raw ``generate(static)`` and lm-eval's HFLM, the default probe run is fast, and perplexity
uses the card well."""

from __future__ import annotations

from typing import Any

from tunebench.bench.metrics import _target

Row = dict[str, Any]
TARGETS = {"adapter_ratio": 0.95, "vs_raw_static": 1.0, "probe_run_tokens_per_s": 20000.0, "ppl_mfu": 0.45}


def _best_ppl(mine: list[Row], variant: str) -> Row | None:
    """The fastest perplexity row of ``variant`` (over the batch-token budgets)."""
    return max(
        (r for r in mine if r["kind"] == "perplexity" and r.get("variant") == variant),
        key=lambda r: r["tokens_per_s"],
        default=None,
    )


def _gen(mine: list[Row], gen_batch: int, variant: str, sampling: str, path: str = "suite generate") -> Row | None:
    """The generation row of ``variant``, ``sampling`` and ``path`` at the benchmark's batch."""
    return next(
        (
            r
            for r in mine
            if r["kind"] == "generation"
            and r.get("variant") == variant
            and r.get("sampling") == sampling
            and r.get("path") == path
            and r["batch"] == gen_batch
        ),
        None,
    )


def _adapter_targets(mine: list[Row], shape: str, gen_batch: int) -> list[Row]:
    """Base perplexity MFU, then, per adapter variant, perplexity and generation throughput against the base."""
    base_ppl = _best_ppl(mine, "base")
    out = [
        _target(
            "perplexity MFU (2·N·tokens/s) >= 45% [base]",
            shape,
            base_ppl and base_ppl["mfu"],
            TARGETS["ppl_mfu"],
            True,
            "best budget",
            "not measured",
        )
    ]
    for variant in ("lora-merged", "lora-unmerged"):
        v = _best_ppl(mine, variant)
        out.append(
            _target(
                f"perplexity tokens/s ÷ base >= 0.95 [{variant}]",
                shape,
                v["tokens_per_s"] / base_ppl["tokens_per_s"] if v and base_ppl else None,
                TARGETS["adapter_ratio"],
                True,
                "best budget each",
                "not measured",
            )
        )
        for sampling in ("seed", "greedy"):
            g, b = _gen(mine, gen_batch, variant, sampling), _gen(mine, gen_batch, "base", sampling)
            out.append(
                _target(
                    f"generation new tokens/s ÷ base >= 0.95 [{variant}, {sampling}]",
                    shape,
                    g["new_tokens_per_s"] / b["new_tokens_per_s"] if g and b else None,
                    TARGETS["adapter_ratio"],
                    True,
                    f"batch {gen_batch}",
                    "not measured",
                )
            )
    return out


def _reference_targets(mine: list[Row], shape: str, gen_batch: int) -> list[Row]:
    """The suite against the references: raw ``generate(static)`` batched and streamed, and lm-eval's HFLM."""
    out = []
    for sampling in ("seed", "greedy"):
        g, raw = (
            _gen(mine, gen_batch, "base", sampling),
            _gen(mine, gen_batch, "base", sampling, "raw generate(static)"),
        )
        out.append(
            _target(
                f"suite generation ÷ raw generate(static) >= 1 [{sampling}]",
                shape,
                g["new_tokens_per_s"] / raw["new_tokens_per_s"] if g and raw else None,
                TARGETS["vs_raw_static"],
                True,
                f"batch {gen_batch}",
                "not measured",
            )
        )
    chat = {r["path"]: r for r in mine if r["kind"] == "chat" and r.get("new_tokens_per_s")}
    suite, raw = chat.get("tunebench chat"), chat.get("raw generate(static) + TextStreamer")
    out.append(
        _target(
            "chat new tokens/s ÷ raw generate(static) >= 1 [streamed, batch 1]",
            shape,
            suite["new_tokens_per_s"] / raw["new_tokens_per_s"] if suite and raw else None,
            TARGETS["vs_raw_static"],
            True,
            f"{suite['answers']} answers" if suite else "chat",
            "not measured",
        )
    )
    out.append(_lm_eval_ll_target(mine, shape))
    return out


def _lm_eval_ll_target(mine: list[Row], shape: str) -> Row:
    """HFLM's wall time over the suite's on the loglikelihood tasks, counted only when their metrics agree."""
    ll = {r["runner"]: r for r in mine if r["kind"] == "lm-eval-ll" and r.get("seconds")}
    hf, suite = ll.get("lm-eval HFLM"), ll.get("tunebench")
    same = bool(suite and suite.get("max_metric_difference") is not None and suite["max_metric_difference"] < 1e-6)
    return _target(
        "lm-eval loglikelihood: HFLM wall time ÷ the suite's >= 1 [same metrics]",
        shape,
        hf["seconds"] / suite["seconds"] if hf and suite and same else None,
        TARGETS["vs_raw_static"],
        True,
        suite["tasks"] if suite else "lm-eval-ll",
        "not measured, or the metrics differ",
    )


def _probe_targets(mine: list[Row], shape: str) -> list[Row]:
    """The default probe run's rate, for the base and the merged adapter."""
    out = []
    for variant in ("base", "lora-merged"):
        pr = next((r for r in mine if r["kind"] == "probe-run" and r.get("variant") == variant), None)
        out.append(
            _target(
                f"default probe run new tokens/s >= 20,000 [{variant}]",
                shape,
                pr and pr["new_tokens_per_s"],
                TARGETS["probe_run_tokens_per_s"],
                True,
                f"{pr['prompts']}x{pr['samples_per_prompt']} answers" if pr else "probe run",
                "not measured",
            )
        )
    return out


def eval_targets(rows: list[Row], shapes: list[str], gen_batch: int) -> list[Row]:
    """The evaluation targets, per shape: with an adapter (merged, the default; and unmerged) perplexity and
    generation reach 95% of the base's throughput; the suite's generation reaches raw ``generate(static)`` at
    the same batch; the default probe run reaches 20,000 new tokens/s; base perplexity MFU >= 45%."""
    out = []
    for shape in shapes:
        mine = [r for r in rows if r.get("shape") == shape and "error" not in r]
        out += _adapter_targets(mine, shape, gen_batch)
        out += _reference_targets(mine, shape, gen_batch)
        out += _probe_targets(mine, shape)
    return out
