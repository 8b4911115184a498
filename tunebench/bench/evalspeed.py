"""`tunebench bench eval`: speed of the suite's evaluation paths on a CUDA GPU.

Per shape, in one worker process: held-out perplexity through ``evals.perplexity.score`` (the assistant-token
scorer every evaluation uses) at one or more batch-token budgets, and batched probe generation through
``evals.generation.generate`` (sampling at temperature 1.5 / min_p 0.1, and greedy) on prompts cut to a fixed
token length; first for the base model, then with a random-init LoRA adapter attached by peft, as a tuned
model is evaluated. Results: eval_speed.json, then eval_speed.md rendered from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tunebench.bench.evalmarkdown import render_eval_md
from tunebench.bench.evaltargets import eval_targets
from tunebench.bench.evalworker import PARTS
from tunebench.bench.host import host_snapshot
from tunebench.bench.metrics import parse_int_list
from tunebench.bench.prepared import prepare_data
from tunebench.bench.repeats import aggregate_targets, interleave
from tunebench.bench.shapes import resolve_shapes
from tunebench.bench.spawn import EXIT_INCOMPLETE, EXIT_OK, Budget, setup, spawn, work_dir
from tunebench.bench.specs import EvalSpec
from tunebench.core.errors import InvalidInput
from tunebench.core.io import atomic_write_json, atomic_write_text, read_json

PROBE_RUN = {"probe_samples": 4, "probe_new_tokens": 64, "probe_batch": 256, "probe_prompts": 34}
"""The default probe run of the Llama presets: the shipped set's 34 prompts x 4 samples at temperature 1.5,
64 new tokens, all answers in one pool (eval.probe_batch_size 256)."""


def parse_parts(text: str) -> list[str]:
    """``--parts``: a comma list of ``PARTS``.

    Raises:
        InvalidInput: an unknown part, or none."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise InvalidInput(
            f"--parts {text!r}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(PARTS)}"
        )
    return parts


def _settings(args: argparse.Namespace, budgets: list[int], parts: list[str]) -> dict[str, Any]:
    """The results' ``settings``: what every shape was measured with."""
    return {
        "dtype": "bfloat16",
        "attention": "sdpa (transformers default)",
        "max_length": args.max_length,
        "ppl_batch_tokens": budgets,
        "ppl_conversations": args.ppl_conversations,
        "gen_batch": args.gen_batch,
        "gen_batches": args.gen_batches,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "lora": {
            "r": args.r,
            "alpha": args.alpha,
            "targets": args.lora_targets.split(","),
            "init": "random (peft init_lora_weights=False)",
        },
        "data": args.data,
        "probe_run": PROBE_RUN,
        "parts": parts,
        "repeats": args.repeats,
        "order": "every repeat inside one worker per shape (--repeats-in-worker), runners alternating"
        if args.repeats_in_worker
        else "interleaved: every shape's worker once per repeat",
    }


def _setup_and_data(
    shapes: dict[str, Any], args: argparse.Namespace, work: Path, budget: Budget, results: dict[str, Any]
) -> dict[str, Any]:
    """Build the shapes and measure the card (the setup worker), then encode each shape's conversations once;
    returns the calibration."""
    setup_res = setup(shapes, args, work, budget)
    cal = setup_res.get("calibration") or {}
    results.update(
        card=setup_res["card"],
        environment=setup_res["environment"],
        calibration=cal,
        shapes={n: s["info"] for n, s in shapes.items()},
        data={},
    )
    for name, s in shapes.items():
        s["prepared"], results["data"][name], _ = prepare_data(
            s["path"],
            s["chat_template"],
            args.data,
            args.max_length,
            max(args.ppl_conversations, 4 * args.gen_batch * args.gen_batches),
            work,
        )
    return cal


def _eval_spec(
    args: argparse.Namespace, name: str, s: dict[str, Any], label: str, k: int, inner: int, extra: dict[str, Any]
) -> EvalSpec:
    """The spec of one shape's worker (repeat ``k``, running ``inner`` repeats); ``extra``: budgets, parts and the
    card's peak."""
    info = s["info"]
    return EvalSpec(
        label=label,
        shape=name,
        model_dir=s["path"],
        chat_template=s["chat_template"],
        prepared=str(s["prepared"]),
        ppl_batch_tokens=extra["budgets"],
        ppl_conversations=args.ppl_conversations,
        gen_batch=args.gen_batch,
        gen_batches=args.gen_batches,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        r=args.r,
        alpha=args.alpha,
        targets=args.lora_targets.split(","),
        params=info["params"],
        head_params=info["vocab_size"] * info["hidden_size"],
        tied=info["tied_embeddings"],
        peak_tflops=extra["peak_tflops"],
        **PROBE_RUN,
        merge_base=True,
        parts=extra["parts"],
        lm_eval_batches=[80],
        lm_eval_ll_tasks=[t.strip() for t in args.lm_eval_tasks.split(",")],
        lm_eval_ll_batch=args.lm_eval_batch,
        lm_eval_ll_limit=args.lm_eval_limit,
        repeat=k,
        inner_repeats=inner,
    )


def _run_worker(spec: EvalSpec, work: Path, budget: Budget) -> dict[str, Any]:
    """One shape's worker; a worker stopped by the budget keeps the rows it saved before."""
    partial = work / "results" / f"{spec.label}.partial.json"
    partial.unlink(missing_ok=True)
    spec.partial = str(partial)
    res = spawn(spec, work, budget, min_seconds=60)
    if res.get("status") != "ok" and not res.get("rows") and partial.exists():  # stopped by the budget
        res["rows"] = read_json(partial)["rows"]
        res["error"] = f"{res.get('error')}; the rows it measured before are kept"
    return res


def _record(results: dict[str, Any], status: dict[str, Any], name: str, k: int, res: dict[str, Any]) -> None:
    """One worker's rows and status into the results."""
    worst = status.get(name, {}).get("status", "ok")  # a shape is ok only if every repeat was
    status[name] = {f: res.get(f) for f in ("status", "error", "prompts", "dtype", "worker_s")}
    if worst != "ok":
        status[name]["status"] = worst
    results["rows"] += [{"shape": name, "repeat": k, **r} for r in res.get("rows", [])]  # a row's own repeat wins
    results["workers"] = status


def run_eval(args: argparse.Namespace) -> int:
    """The parent of ``bench eval``: setup, data, one worker per shape, results after each."""

    budgets = parse_int_list(args.ppl_batch_tokens, "--ppl-batch-tokens")
    parts = parse_parts(args.parts)
    budget, work, out = Budget(args.budget_s), work_dir(args), Path(args.out)
    host = {"before": host_snapshot()}
    shapes = resolve_shapes([x.strip() for x in args.shape.split(",") if x.strip()], args.tokenizer)
    results: dict[str, Any] = {
        "schema": "tunebench.eval_speed/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "tunebench bench " + " ".join(args.argv),
        "settings": _settings(args, budgets, parts),
        "rows": [],
        "host": host,
    }
    cal = _setup_and_data(shapes, args, work, budget, results)
    write_eval(results, out)
    status: dict[str, Any] = {}
    inner = args.repeats if args.repeats_in_worker else 1
    extra = {"budgets": budgets, "parts": parts, "peak_tflops": cal.get("peak_tflops")}
    for k, (name, s) in interleave(list(shapes.items()), args.repeats // inner):
        label = f"{name}-eval" + (f"-r{k}" if args.repeats > inner else "")
        res = _run_worker(_eval_spec(args, name, s, label, k, inner, extra), work, budget)
        _record(results, status, name, k, res)
        write_eval(results, out)
    host["after"] = host_snapshot()
    write_eval(results, out)
    ok = all(v["status"] == "ok" for v in status.values())
    print(f"\nresults: {out / 'eval_speed.json'} and {out / 'eval_speed.md'}" + ("" if ok else " (a shape failed)"))
    return EXIT_OK if ok else EXIT_INCOMPLETE


def write_eval(results: dict[str, Any], out: Path) -> None:
    """eval_speed.json (the source of truth), then eval_speed.md rendered from it; both atomically."""
    shapes, gen_batch = list(results.get("shapes", {})), results["settings"]["gen_batch"]
    results["targets"] = aggregate_targets(results["rows"], lambda rows: eval_targets(rows, shapes, gen_batch))
    atomic_write_json(out / "eval_speed.json", results)
    atomic_write_text(out / "eval_speed.md", render_eval_md(results))
