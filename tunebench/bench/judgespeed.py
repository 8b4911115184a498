"""Judge-stage speed: MT-Bench's 80 questions x 2 turns answered by two models, then judged in both orders.

``python -m tunebench.bench.judgespeed --tokenizer DIR --out DIR`` on a GPU. The model is a named shape (random
bf16 weights, the Llama 3 tokenizer: ``bench.shapes``); it answers as base and as tuned (each with a cold
generation cache) and judges (same shape, in-process, ``evals.judge.stage``). Random weights rarely emit an end-of-turn
token, so every answer and every judgment runs to its length cap: an upper bound of what a trained judge costs.
``--verdicts explain logprobs`` also times the probability judge (``evals.judge.logprobs``: one prefill per
judgment, whatever the weights), ``--repeats K`` repeats answers and judgments to give the ratio's spread.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tunebench.bench.card import cuda_facts
from tunebench.bench.shapes import build_shape
from tunebench.core.io import atomic_write_json, atomic_write_text, environment
from tunebench.core.markdown import table
from tunebench.evals.judge import prompts as jp
from tunebench.evals.judge import stage as jd
from tunebench.evals.judge.logprobs import LogprobJudge
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


def _judge(loaded: Any, verdict: str, cap: int | None, batch: int, prefill_batch: int) -> Any:
    if verdict == "logprobs":
        return LogprobJudge(loaded, prefill_batch, progress=False)
    return jd.InProcessJudge(loaded, int(cap or 0), batch, progress=False)


def run(
    shape: str,
    tokenizer: str | None,
    questions: int,
    answer_tokens: int,
    judge_tokens: list[int],
    batch: int,
    verdicts: tuple[str, ...] = ("explain",),
    repeats: int = 1,
    prefill_batch: int = 32,
) -> dict[str, Any]:
    """Per repeat: answer twice, then judge in each verdict mode (explain: at each judgment length cap; logprobs:
    one prefill per judgment); return timings and counts, every phase with a cold cache."""
    _fresh_cache()
    folder = build_shape(shape, tokenizer)
    loaded = load_for_eval(str(folder), None, "llama-3.1", dtype="bfloat16")
    items = jp.load_mtbench(questions)
    prompts = {"explain": jp.mtbench_prompts(), "logprobs": jp.verdict_only(jp.mtbench_prompts())}
    rows: list[dict[str, Any]] = []
    for rep in range(repeats):
        answers = {}
        for side in ("base", "tuned"):
            _fresh_cache()
            answers[side], sec = _timed(lambda: jd.answer(loaded, items, answer_tokens, batch, 1234, progress=False))
            rows.append(
                {
                    "phase": f"answers ({side})",
                    "requests": 2 * len(items),
                    "max_new_tokens": answer_tokens,
                    "seconds": sec,
                    "repeat": rep,
                }
            )
        for verdict in verdicts:
            for cap in judge_tokens if verdict == "explain" else [None]:
                _fresh_cache()
                judge, ps = _judge(loaded, verdict, cap, batch, prefill_batch), prompts[verdict]
                js, sec = _timed(
                    lambda judge=judge, ps=ps, a=answers: jd.judge_set(
                        "mt_bench", items, a["base"], a["tuned"], judge, ps
                    )
                )
                extra = {"verdict": verdict, "repeat": rep, "unparsed": js.unparsed}
                rows.append(
                    {
                        "phase": "judgments (both orders)",
                        "requests": js.judgments,
                        "max_new_tokens": cap,
                        "seconds": sec,
                    }
                    | extra
                )
                _, sec = _timed(lambda judge=judge, ps=ps: jd.sanity_check(judge, ps))
                n = 2 * len(jp.sanity_pairs())
                extra = {"verdict": verdict, "repeat": rep}  # the set's unparsed count belongs to its row only
                rows.append({"phase": "sanity pairs", "requests": n, "max_new_tokens": cap, "seconds": sec} | extra)
    return {
        "shape": shape,
        "questions": len(items),
        "batch": batch,
        "prefill_batch": prefill_batch,
        "repeats": repeats,
        "rows": rows,
        "cuda": cuda_facts(),
        "environment": environment(),
    }


def answers_by_repeat(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Repeat -> seconds of both sides' answers in it."""
    answers: dict[int, float] = {}
    for r in rows:
        if r["phase"].startswith("answers"):
            answers[r.get("repeat", 0)] = answers.get(r.get("repeat", 0), 0.0) + r["seconds"]
    return answers


def stage_ratios(res: dict[str, Any]) -> dict[tuple[str, Any], list[tuple[float, float]]]:
    """(verdict, cap) -> per repeat (judge stage seconds, that repeat's both sides' answers seconds)."""
    answers = answers_by_repeat(res["rows"])
    stage: dict[tuple[str, Any], dict[int, float]] = {}
    for r in res["rows"]:
        if not r["phase"].startswith("answers"):
            rep, key = r.get("repeat", 0), (r.get("verdict", "explain"), r["max_new_tokens"])
            stage.setdefault(key, {})[rep] = stage.get(key, {}).get(rep, 0.0) + r["seconds"]
    return {k: [(sec, answers[rep]) for rep, sec in sorted(v.items())] for k, v in stage.items()}


def _stage_line(verdict: str, cap: Any, runs: list[tuple[float, float]]) -> str:
    ratios = [sec / ans for sec, ans in runs]
    what = f"max_new_tokens {cap}" if verdict == "explain" else "verdict logprobs (one prefill per judgment)"
    mean_s = sum(sec for sec, _ in runs) / len(runs)
    spread = f" (min-max over {len(runs)} repeats: {min(ratios):.2f}-{max(ratios):.2f}x)" if len(runs) > 1 else ""
    ratio = sum(ratios) / len(ratios)
    return f"- judge stage (judgments + sanity) at {what}: {mean_s:.1f} s, {ratio:.2f}x the answers{spread}\n"


def render(res: dict[str, Any]) -> str:
    reps = {r.get("repeat", 0) for r in res["rows"]}
    answers = sum(r["seconds"] for r in res["rows"] if r["phase"].startswith("answers")) / len(reps)
    per_repeat, body = answers_by_repeat(res["rows"]), []
    for r in res["rows"]:
        rep_answers = per_repeat[r.get("repeat", 0)]
        label = r["phase"] + (" [logprobs]" if r.get("verdict") == "logprobs" else "")
        cap = "-" if r["max_new_tokens"] is None else r["max_new_tokens"]
        cells = [label, r["requests"], cap, f"{r['seconds']:.1f}", f"{r['seconds'] / rep_answers:.2f}x"]
        body.append(cells if len(reps) == 1 else [r.get("repeat", 0) + 1, *cells])
    lines = "".join(_stage_line(v, cap, runs) for (v, cap), runs in stage_ratios(res).items())
    head = (
        f"# Judge stage speed: MT-Bench, {res['questions']} questions x 2 turns, shape {res['shape']}\n\n"
        f"- device: {res['cuda'].get('name', 'n/a')}; batch {res['batch']}; random weights, so every answer and "
        "judgment runs to its cap (an upper bound)\n"
        f"- both sides' answers together: {answers:.1f} s (each side with a cold generation cache)\n{lines}\n"
    )
    cols = ["Phase", "Requests", "max_new_tokens", "Seconds", "vs both sides' answers"]
    return head + table(body, cols if len(reps) == 1 else ["Repeat", *cols]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--tokenizer", default=None, help="Llama 3 tokenizer folder (default: llama-models')")
    ap.add_argument("--questions", type=int, default=80)
    ap.add_argument("--answer-tokens", type=int, default=256)
    ap.add_argument("--judge-tokens", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=160)
    ap.add_argument("--verdicts", nargs="+", choices=["explain", "logprobs"], default=["explain"])
    ap.add_argument("--repeats", type=int, default=1, help="answer and judge this many times (spread of the ratio)")
    ap.add_argument("--prefill-batch", type=int, default=32, help="judgments per forward pass (verdict logprobs)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    res = run(
        a.shape,
        a.tokenizer,
        a.questions,
        a.answer_tokens,
        a.judge_tokens,
        a.batch,
        tuple(a.verdicts),
        a.repeats,
        a.prefill_batch,
    )
    out = Path(a.out)
    atomic_write_json(out / "judgespeed.json", res)
    text = render(res)
    atomic_write_text(out / "judgespeed.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
