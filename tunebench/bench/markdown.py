"""speed.json -> speed.md: the Markdown view of the training benchmark, and the header and target tables that the
evaluation benchmark shares. The JSON is the source of truth; this only renders it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.bench.metrics import speed_ratios, speed_targets
from tunebench.bench.scaling import render_scaling, scaling_rows
from tunebench.core.io import atomic_write_json, atomic_write_text


def write_speed(results: dict[str, Any], out: Path) -> None:
    """speed.json (the source of truth), then speed.md rendered from it; both atomically."""
    results["ratios"] = speed_ratios(results["rows"])
    results["targets"] = speed_targets(results["rows"], list(results.get("shapes", {})))
    results["scaling"] = scaling_rows(results["rows"])
    atomic_write_json(out / "speed.json", results)
    atomic_write_text(out / "speed.md", render_speed_md(results))


def _f(x: Any, fmt: str = ",.0f", none: str = "–") -> str:
    return none if x is None else format(x, fmt)


def header_lines(results: dict[str, Any], title: str) -> list[str]:
    """Card, versions and calibration lines shared by both reports."""
    env, card, cal = results.get("environment") or {}, results.get("card") or {}, results.get("calibration") or {}
    versions = " · ".join(f"{k} {env.get(k) or 'absent'}" for k in
                          ("torch", "transformers", "trl", "peft", "unsloth", "unsloth-zoo", "bitsandbytes", "accelerate"))
    return [
        f"# {title}", "",
        f"- card: **{card.get('name', 'unknown')}** ({_f(card.get('memory_gib'), '.1f')} GiB, compute capability "
        f"{card.get('capability', '?')}); bf16 matmul peak measured **{_f(cal.get('peak_tflops'), '.0f')} TFLOP/s** "
        f"({cal.get('method', 'not measured')}; datasheet dense bf16 {_f(cal.get('datasheet_tflops'), '.0f')})",
        f"- versions: python {env.get('python')} · CUDA {env.get('cuda')} · {versions}",
        f"- tunebench commit: `{env.get('tunebench_commit')}`"
        + (f" (source `{env['tunebench_source']}`)" if env.get("tunebench_source") else "")
        + f" · created {results.get('created')} · "
        f"command `{results.get('command')}`",
    ]


def render_speed_md(results: dict[str, Any]) -> str:
    """Markdown view of speed.json (the JSON is the source of truth)."""
    st = results.get("settings", {})
    lora = st.get("lora", {})
    lines = header_lines(results, "Training speed: the suite's train() per backend")
    lines += [
        f"- settings: {st.get('quantization')}; LoRA r={lora.get('r')} alpha={lora.get('alpha')} on "
        f"{', '.join(lora.get('targets', []))}; max length {st.get('max_length')}; {st.get('optimizer')}; "
        f"gradient checkpointing {st.get('gradient_checkpointing')}; warm-up {st.get('warmup_steps')} steps, then "
        f"{st.get('measured_steps_first_point')} measured steps at the first point and "
        f"{st.get('measured_steps_other_points')} at the others; first point "
        + ("= the seed's settings (2 × 4, 2048, r16)" if st.get("first_point_is_seed_settings") else
           "differs from the seed's settings (2 × 4, 2048, r16)"),
    ]
    for name, d in (results.get("data") or {}).items():
        t = d.get("tokens", {})
        lines.append(f"- data ({name}): {d.get('conversations')} conversations of `{d.get('source')}` through "
                     f"train/data.py ({d.get('template')} template); tokens per conversation p50 {t.get('p50')}, "
                     f"p90 {t.get('p90')}, max {t.get('max')}; {d.get('truncated')} truncated at {d.get('max_length')}")
    for b, note in st.get("backends", {}).items():
        lines.append(f"- `{b}`: {note}")
    title, note = tokenizer_note(results)
    lines += ["", f"> **Random weights, {title}.** {note} Each shape is the published Llama 3.2 "
              "architecture with random bf16 weights (speed does not depend on their values; losses do, so ignore "
              "them). **MFU** = 6 · N · real tokens/s ÷ the "
              "measured matmul peak, N = all parameters with tied embeddings counted once; attention FLOPs and "
              "gradient-checkpointing recomputation are not counted. **Peak memory** = "
              "`torch.cuda.max_memory_allocated` over `trainer.train()` (the suite's trainer resets it after the "
              "model load): 4-bit weights, LoRA, optimizer states, activations and loss buffers; *steady* = the "
              "measured steps only; *reserved* = what the caching allocator held. Real tokens exclude padding; "
              "every row at one point draws the same batches (same seed, same data).", ""]
    rows = results.get("rows", [])
    for name, info in (results.get("shapes") or {}).items():
        lines += [f"## {name}: {info.get('params', 0):,} parameters, {info.get('weights')}", "",
                  "| backend | batch × accum | real tok/s | tok/s incl. padding | step s median (p10–p90) | "
                  "peak alloc GiB (steady) | peak reserved GiB | MFU | status |",
                  "|---|---|---:|---:|---|---:|---:|---:|---|"]
        for r in (r for r in rows if r["shape"] == name):
            label = r["backend"] + ("" if r.get("gradient_checkpointing", True) else ", no ckpt") + (
                " (find-best)" if r.get("find_best") else "")
            if r.get("status") != "ok":
                lines.append(f"| {label} | {r['batch_size']} × {r['grad_accum']} | | | | | | | "
                             f"{r.get('status')}: {str(r.get('error', ''))[:160].replace('|', '/')} |")
                continue
            lines.append(
                f"| {label} | {r['batch_size']} × {r['grad_accum']} | {_f(r['real_tokens_per_s'])} | "
                f"{_f(r['positions_per_s'])} | {_f(r['step_s_median'], '.3f')} ({_f(r['step_s_p10'], '.3f')}–"
                f"{_f(r['step_s_p90'], '.3f')}) | {_f(r.get('peak_allocated_gib'), '.2f')} "
                f"({_f(r.get('steady_peak_allocated_gib'), '.2f')}) | {_f(r.get('peak_reserved_gib'), '.2f')} | "
                f"{_f(r.get('mfu'), '.1%')} | ok ({r['measured_steps']} steps, {r['real_tokens']:,} real tokens"
                + (f"; {r['compiled_blocks']} blocks compiled" if r.get("compiled_blocks") else "")
                + ("" if r.get("mask_agreement") in (None, 1.0) else
                   f"; Unsloth's mask = shared mask on {r['mask_agreement']:.0%} of conversations") + ") |")
        lines.append("")
    ratios = results.get("ratios") or []
    if ratios:
        lines += ["## Ratios against hf (same invocation)", "",
                  "| shape | batch × accum | backend | real tok/s × | peak alloc × | peak reserved × | same batches |",
                  "|---|---|---|---:|---:|---:|---|"]
        for q in ratios:
            lines.append(f"| {q['shape']} | {q['batch_size']} × {q['grad_accum']} | {q['backend']} | "
                         f"{_f(q['real_tokens_per_s_ratio'], '.2f')} | {_f(q['peak_allocated_ratio'], '.2f')} | "
                         f"{_f(q['peak_reserved_ratio'], '.2f')} | {'yes' if q['same_tokens'] else 'no'} |")
        lines.append("")
    lines += render_scaling(results.get("scaling") or [])
    lines += find_best_section(results)
    lines += target_table(results.get("targets") or [])
    if results.get("notes"):  # what the person who ran it adds: conditions the numbers depend on
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def target_table(targets: list[dict[str, Any]]) -> list[str]:
    """The targets section: value, threshold, met, margin."""
    lines = ["## Targets", "", "| target | shape | where | value | met | margin |", "|---|---|---|---:|---|---:|"]
    for t in targets:
        pct = abs(t["threshold"]) < 1 and "MFU" in t["target"]
        val = "–" if t["value"] is None else (f"{t['value']:.1%}" if pct else f"{t['value']:,.2f}")
        met = {True: "**yes**", False: "**no**", None: f"not measured ({t['note']})"}[t["met"]]
        margin = "–" if t["margin"] is None else (
            f"{t['margin']:+.1%}" if pct else f"{t['margin']:+,.2f}") + (
            "" if t["margin_relative"] is None else f" ({t['margin_relative']:+.0%} of the threshold)")
        lines.append(f"| {t['target']} | {t['shape']} | {t['where']} | {val} | {met} | {margin} |")
    return lines




def tokenizer_note(results: dict[str, Any]) -> tuple[str, str]:
    """What the token counts come from: Meta's Llama 3 tokenizer, or the SmolLM2 stand-in of older runs."""
    kinds = {str(i.get("tokenizer", "")) for i in (results.get("shapes") or {}).values()}
    if kinds and all(k.startswith("Llama 3") for k in kinds):
        return "Llama 3 tokenizer", ("Token counts come from Meta's Llama 3 tokenizer (llama-models 0.3.0 "
                                     "`tokenizer.model`, converted to a transformers tokenizer), as the real "
                                     "Llama 3.2 models count them.")
    return "stand-in tokenizer", ("Token counts come from a stand-in tokenizer (SmolLM2's vocabulary plus the "
                                  "Llama 3 special tokens), which splits text into more tokens than Llama 3's would.")


def find_best_section(results: dict[str, Any]) -> list[str]:
    """The --find-best choice per shape, with the config line that trains at it (empty without --find-best)."""
    best = results.get("find_best") or {}
    if not best:
        return []
    fb = (results.get("settings") or {}).get("find_best") or {}
    limit = fb.get("memory_limit_gib")
    lines = ["## Fastest setting (--find-best)", "",
             f"Swept in one {fb.get('backend')} process: micro-batch × layout (padded, padding-free, packed) × "
             f"gradient checkpointing, accumulation 1, {fb.get('measured_steps')} measured steps each, memory limit "
             + (f"{limit} GiB (the card capped there)" if limit else "the whole card") + ". The rows marked "
             "(find-best) above; the fastest whose peak reserved memory fits:", ""]
    for shape, b in best.items():
        if b is None:
            lines.append(f"- {shape}: no setting ran within the limit")
            continue
        lines += [f"- {shape}: **{b['backend']} {b['batch_size']} × {b['grad_accum']}**, gradient checkpointing "
                  f"{'on' if b['gradient_checkpointing'] else 'off'}: {_f(b['real_tokens_per_s'])} real tokens/s, MFU "
                  f"{_f(b.get('mfu'), '.1%')}, peak reserved {_f(b.get('peak_reserved_gib'), '.2f')} GiB", "",
                  f"      {b['config_line']}", ""]
    return lines
