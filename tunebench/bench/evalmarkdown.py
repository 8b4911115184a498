"""eval_speed.json -> eval_speed.md: the Markdown view of ``bench eval``, one table per kind of row, every table
through ``core.markdown``. The JSON is the source of truth; this only renders it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunebench.bench.markdown import _f, header_lines, target_table, tokenizer_note
from tunebench.core.markdown import compact_table

Row = dict[str, Any]


def _section(rows: list[Row], intro: str, columns: list[str], cells: Callable[[Row], list[Any]]) -> list[str]:
    """Markdown lines of one table after an intro line (nothing without rows). ``columns``: header names, a trailing
    ``:`` right-aligns one; a row with an ``error`` shows it in place of the cells after the first."""
    if not rows:
        return []
    first = columns[0].rstrip(":")
    body = [
        [str(v) for v in cells(r)]
        if "error" not in r
        else [str(r.get(first, "")), f"**failed**: {r['error']}", *[""] * (len(columns) - 2)]
        for r in rows
    ]
    return ["", intro, "", *compact_table(columns, body)]


def _settings_lines(results: dict[str, Any]) -> list[str]:
    """The settings line and the note on what the columns mean."""
    st = results["settings"]
    return [
        f"- settings: {st['dtype']}, {st['attention']}; perplexity over {st['ppl_conversations']} conversations "
        f"(max length {st['max_length']}) at batch-token budgets {', '.join(map(str, st['ppl_batch_tokens']))}; "
        f"generation of {st['new_tokens']} new tokens for {st['gen_batch'] * st['gen_batches']} prompts of "
        f"{st['prompt_tokens']} tokens in batches of {st['gen_batch']}, generation cache off; LoRA r={st['lora']['r']} "
        f"alpha={st['lora']['alpha']} on {', '.join(st['lora']['targets'])}, {st['lora']['init']}",
        "",
        f"> **Random weights, {tokenizer_note(results)[0]}** (see speed.md). Perplexity **MFU** = 2 · N · input "
        "tokens/s ÷ "
        "the measured matmul peak over the second (warm) pass; the cold first pass is shown in brackets; "
        "*actual-work MFU* counts the LM head only on the scored (assistant) positions, "
        "as the suite computes it. Generation with random weights rarely emits an end-of-turn token, so nearly "
        "every row runs the full length; new tokens/s counts tokens up to and including a stop token. "
        "*ms/step* = generate() time ÷ decode steps; timed after one untimed batch of the same settings (its rate in "
        "brackets).",
        "",
    ]


def _perplexity_table(mine: list[Row]) -> list[str]:
    cols = ["model", "batch tokens:", "input tokens:", "tokens/s (cold pass):", "MFU:", "actual-work MFU:", "peak GiB:"]
    body = [
        [
            r["variant"],
            f"{r['batch_tokens']:,}",
            f"{r['input_tokens']:,}",
            f"{_f(r['tokens_per_s'])} ({_f(r.get('cold_tokens_per_s'))})",
            _f(r["mfu"], ".1%"),
            _f(r["mfu_actual_work"], ".1%"),
            _f(r["peak_allocated_gib"], ".2f"),
        ]
        for r in mine
        if r["kind"] == "perplexity" and "error" not in r
    ]
    return compact_table(cols, body)


def _generation_cells(r: Row) -> list[Any]:
    if "error" in r:
        return [r.get("variant"), r.get("path", ""), r.get("sampling", ""), "", "", f"**failed**: {r['error']}"] + [
            ""
        ] * 3
    path = r.get("path", "suite generate") + (f" ({r['decode_path']})" if r.get("decode_path") else "")
    return [
        r["variant"],
        path,
        r["sampling"],
        r["batch"],
        f"{r['new_tokens']:,}",
        f"{_f(r['new_tokens_per_s'])} ({_f(r.get('cold_new_tokens_per_s'))})",
        _f(r.get("ms_per_step"), ".1f"),
        _f(r.get("rows_x_steps_per_s")),
        _f(r["peak_allocated_gib"], ".2f"),
    ]


def _generation_table(mine: list[Row]) -> list[str]:
    cols = [
        "model",
        "path",
        "sampling",
        "batch:",
        "new tokens:",
        "new tokens/s (cold batch):",
        "ms/step:",
        "rows×steps/s:",
        "peak GiB:",
    ]
    return ["", *compact_table(cols, [_generation_cells(r) for r in mine if r["kind"] == "generation"])]


def _decode_sections(mine: list[Row]) -> list[str]:
    """The decode step's attention, and the CUDA graph against eager."""
    lines = _section(
        [r for r in mine if r["kind"] == "decode-attention"],
        "Decode step attention (CUDA graph replays, greedy, random token ids; the suite decodes with `grouped`):",
        ["attention", "batch:", "context width:", "steps:", "ms/step:", "new tokens/s:"],
        lambda r: [
            r["attention"],
            r["batch"],
            f"{r['width']:,}",
            r["steps"],
            f"{r['ms_per_step']:.2f}",
            _f(r["new_tokens_per_s"]),
        ],
    )
    return lines + _section(
        [r for r in mine if r["kind"] == "graph-check"],
        "The decode loop with each step one CUDA graph replay against the same loop run eagerly (one batch, one "
        "seed, full length):",
        ["sampling", "batch:", "steps:", "captured", "identical tokens", "graph ms/step:", "eager ms/step:"],
        lambda r: [
            r.get("sampling", ""),
            r["batch"],
            r["steps"],
            r["captured"],
            r["identical"],
            f"{r['graph_ms_per_step']:.2f}",
            f"{r['eager_ms_per_step']:.2f}",
        ],
    )


def _chat_section(mine: list[Row]) -> list[str]:
    return _section(
        [r for r in mine if r["kind"] == "chat"],
        "Chat, one streamed answer at a time (the suite: `evals.chat.chat` with scripted input, a capture of the "
        "decode loop per answer included; raw: `generate` with TextStreamer after one untimed compiling answer):",
        ["path", "sampling", "answers:", "new tokens:", "new tokens/s:", "ms/token:"],
        lambda r: [
            r["path"] + (f" ({r['decode_path']})" if r.get("decode_path") else ""),
            r["sampling"],
            r["answers"],
            f"{r['new_tokens']:,}",
            _f(r["new_tokens_per_s"]),
            f"{r['ms_per_token']:.2f}",
        ],
    )


def _probe_table(mine: list[Row]) -> list[str]:
    probe = [r for r in mine if r["kind"] == "probe-run"]
    if not probe:
        return []
    body = [
        [r["variant"], f"**failed**: {r['error']}", *[""] * 5]
        if "error" in r
        else [
            r["variant"],
            f"{r['prompts']}×{r['samples_per_prompt']} ({r.get('decode_path', 'static')})",
            r["batch"],
            r["calls"],
            f"{r['new_tokens']:,}",
            _f(r["new_tokens_per_s"]),
            _f(r["cold_s"], ".1f"),
        ]
        for r in probe
    ]
    cols = ["model", "answers:", "batch:", "calls:", "new tokens:", "new tokens/s:", "first call s:"]
    return ["", "Default probe run (one pool of all answers; the decode loop that ran in brackets):", ""] + (
        compact_table(cols, body)
    )


def _lm_eval_sections(mine: list[Row]) -> list[str]:
    """lm-eval's loglikelihood tasks, then generate_until: HFLM beside the suite's model class."""
    lines = _section(
        [r for r in mine if r["kind"] == "lm-eval-ll"],
        "lm-eval loglikelihood tasks, every document unless limited, no chat template: wall time of "
        "simple_evaluate with lm-eval's own HFLM and with the suite's model class on the same model; the largest "
        "difference between their metric values:",
        ["runner", "repeat:", "tasks", "documents:", "batch:", "seconds:", "max metric difference:"],
        lambda r: [
            r["runner"],
            r.get("repeat", 0) + 1,
            r["tasks"],
            f"{r['documents']:,}",
            r["batch"],
            _f(r["seconds"], ".1f"),
            _f(r.get("max_metric_difference"), ".2g"),
        ],
    )
    lme = [r for r in mine if r["kind"] == "lm-eval"]
    if not lme:
        return lines
    body = [
        [r.get("runner", "lm-eval HFLM"), r.get("batch", ""), r["cache"]]
        + ([f"**failed**: {r['error']}", ""] if "error" in r else [r["pass"], f"{r['seconds']:.1f}"])
        for r in lme
    ]
    return lines + [
        "",
        "lm-eval generate_until (tunebench_arith_gen: 80 documents, greedy, up to 64 new tokens, chat "
        "template), wall time of simple_evaluate; runner `lm-eval HFLM` is lm-eval's own model, `tunebench` "
        "the suite's (evals/lm_eval/model.py):",
        "",
        *compact_table(["runner", "batch:", "KV cache", "pass", "seconds:"], body),
    ]


def _merge_table(mine: list[Row]) -> list[str]:
    merge = [r for r in mine if r["kind"] == "merge-base"]
    if not merge:
        return []
    body = [
        [r["comparison"], r.get("error"), "", ""]
        if "error" in r
        else [r["comparison"], r["positions"], f"{r['kl_nats_per_token']:.2e}", f"{r['top1_agreement']:.2%}"]
        for r in merge
    ]
    return [
        "",
        "Which base a QLoRA adapter is merged into (next-token distributions over one "
        "512-token conversation; random weights):",
        "",
        *compact_table(["comparison", "positions:", "KL nats/token:", "top-1 agreement:"], body),
    ]


def _shape_lines(results: dict[str, Any], name: str, info: dict[str, Any]) -> list[str]:
    """One shape's section: its worker's status, then a table per kind of row."""
    w = (results.get("workers") or {}).get(name) or {}
    lines = [f"## {name}: {info.get('params', 0):,} parameters, {info.get('weights')}", ""]
    if w.get("status") not in (None, "ok"):
        lines += [f"**{w.get('status')}**: {w.get('error')}", ""]
    mine = [r for r in results["rows"] if r["shape"] == name]
    lines += _perplexity_table(mine)
    lines += _generation_table(mine)
    lines += _decode_sections(mine)
    lines += _chat_section(mine)
    lines += _probe_table(mine)
    lines += _lm_eval_sections(mine)
    lines += _merge_table(mine)
    return lines + [""]


def render_eval_md(results: dict[str, Any]) -> str:
    """Markdown view of eval_speed.json."""
    lines = header_lines(results, "Evaluation speed: perplexity and generation")
    lines += _settings_lines(results)
    for name, info in (results.get("shapes") or {}).items():
        lines += _shape_lines(results, name, info)
    lines += target_table(results.get("targets") or [])
    if results.get("notes"):  # what the person who ran it adds: conditions the numbers depend on
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"
