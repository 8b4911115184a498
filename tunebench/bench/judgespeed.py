"""Judge-stage speed: MT-Bench's 80 questions x 2 turns answered by two models, then judged in both orders.

``python -m tunebench.bench.judgespeed --tokenizer DIR --out DIR`` on a GPU. The model is a named shape (random
bf16 weights, the Llama 3 tokenizer: ``bench.shapes``); it answers as base and as tuned (each with a cold
generation cache) and judges (same shape, in-process, ``evals.judge``). Random weights rarely emit an end-of-turn
token, so every answer and every judgment runs to its length cap: an upper bound of what a trained judge costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tunebench.bench.shapes import build_shape, cuda_facts
from tunebench.core.io import atomic_write_json, atomic_write_text, environment
from tunebench.core.markdown import table
from tunebench.evals import judge as jd
from tunebench.evals import judge_prompts as jp
from tunebench.evals.modeling import load_for_eval


def _timed(fn: Any) -> tuple[Any, float]:
    import torch  # heavy: torch, imported when needed

    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def _fresh_cache() -> None:
    # every phase starts cold: nothing it measures comes from an earlier phase's cache
    os.environ["TUNEBENCH_CACHE"] = tempfile.mkdtemp(prefix="judgespeed-")


def run(
    shape: str, tokenizer: str | None, questions: int, answer_tokens: int, judge_tokens: list[int], batch: int
) -> dict[str, Any]:
    """Answer twice, then judge at each judgment length cap; return timings and counts."""
    _fresh_cache()
    folder = build_shape(shape, tokenizer)
    loaded = load_for_eval(str(folder), None, "llama-3.1", dtype="bfloat16")
    items = jp.load_mtbench(questions)
    prompts = jp.mtbench_prompts()
    rows = []
    answers = {}
    for side in ("base", "tuned"):
        _fresh_cache()
        answers[side], sec = _timed(lambda: jd.answer(loaded, items, answer_tokens, batch, 1234, progress=False))
        rows.append(
            {"phase": f"answers ({side})", "requests": 2 * len(items), "max_new_tokens": answer_tokens, "seconds": sec}
        )
    for cap in judge_tokens:
        _fresh_cache()
        judge = jd.InProcessJudge(loaded, cap, batch, progress=False)
        js, sec = _timed(
            lambda judge=judge: jd.judge_set("mt_bench", items, answers["base"], answers["tuned"], judge, prompts)
        )
        rows.append(
            {"phase": "judgments (both orders)", "requests": js.judgments, "max_new_tokens": cap, "seconds": sec}
        )
        _, sec = _timed(lambda judge=judge: jd.sanity_check(judge, prompts))
        rows.append(
            {"phase": "sanity pairs", "requests": 2 * len(jp.sanity_pairs()), "max_new_tokens": cap, "seconds": sec}
        )
    return {
        "shape": shape,
        "questions": len(items),
        "batch": batch,
        "rows": rows,
        "cuda": cuda_facts(),
        "environment": environment(),
    }


def render(res: dict[str, Any]) -> str:
    answers = sum(r["seconds"] for r in res["rows"] if r["phase"].startswith("answers"))
    body = [
        [r["phase"], r["requests"], r["max_new_tokens"], f"{r['seconds']:.1f}", f"{r['seconds'] / answers:.2f}x"]
        for r in res["rows"]
    ]
    stage = {}
    for r in res["rows"]:
        if not r["phase"].startswith("answers"):
            stage[r["max_new_tokens"]] = stage.get(r["max_new_tokens"], 0.0) + r["seconds"]
    lines = "".join(
        f"- judge stage (judgments + sanity) at max_new_tokens {cap}: {sec:.1f} s, {sec / answers:.2f}x the answers\n"
        for cap, sec in stage.items()
    )
    head = (
        f"# Judge stage speed: MT-Bench, {res['questions']} questions x 2 turns, shape {res['shape']}\n\n"
        f"- device: {res['cuda'].get('name', 'n/a')}; batch {res['batch']}; random weights, so every answer and "
        "judgment runs to its cap (an upper bound)\n"
        f"- both sides' answers together: {answers:.1f} s (each side with a cold generation cache)\n{lines}\n"
    )
    return head + table(body, ["Phase", "Requests", "max_new_tokens", "Seconds", "vs both sides' answers"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--tokenizer", default=None, help="Llama 3 tokenizer folder (default: llama-models')")
    ap.add_argument("--questions", type=int, default=80)
    ap.add_argument("--answer-tokens", type=int, default=256)
    ap.add_argument("--judge-tokens", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=160)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    res = run(a.shape, a.tokenizer, a.questions, a.answer_tokens, a.judge_tokens, a.batch)
    out = Path(a.out)
    atomic_write_json(out / "judgespeed.json", res)
    text = render(res)
    atomic_write_text(out / "judgespeed.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
