"""speed.json -> speed.md: the Markdown view of the training benchmark, and the header and target tables that the
evaluation benchmark shares. The JSON is the source of truth; this only renders it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.bench.host import host_lines
from tunebench.bench.metrics import repeated_speed_targets, row_key, speed_ratios
from tunebench.bench.repeats import mark_cut_short, ratio_summaries, summarize_rows
from tunebench.bench.scaling import render_scaling, scaling_rows
from tunebench.core.io import atomic_write_json, atomic_write_text
from tunebench.core.markdown import compact_table, table
from tunebench.core.numbers import fmt


def write_speed(results: dict[str, Any], out: Path) -> None:
    """speed.json (the source of truth), then speed.md rendered from it; both atomically."""
    mark_cut_short(results["rows"], lambda r: r.get("asked_steps"))
    results["ratios"] = speed_ratios(results["rows"])
    results["ratio_summaries"] = ratio_summaries(results["ratios"])
    results["row_summaries"] = summarize_rows(
        results["rows"], row_key, ("real_tokens_per_s", "peak_allocated_gib", "mfu")
    )
    results["targets"] = repeated_speed_targets(results["rows"], list(results.get("shapes", {})))
    results["scaling"] = scaling_rows(results["rows"])
    atomic_write_json(out / "speed.json", results)
    atomic_write_text(out / "speed.md", render_speed_md(results))


def _f(x: Any, spec: str = ",.0f", none: str = "–") -> str:
    """A number in the format ``spec`` through the one formatter (``–`` when missing)."""
    return str(fmt(x, pattern="{:" + spec + "}", missing=none))


def header_lines(results: dict[str, Any], title: str) -> list[str]:
    """Card, versions and calibration lines shared by both reports."""
    env, card, cal = results.get("environment") or {}, results.get("card") or {}, results.get("calibration") or {}
    versions = " · ".join(
        f"{k} {env.get(k) or 'absent'}"
        for k in ("torch", "transformers", "trl", "peft", "unsloth", "unsloth-zoo", "bitsandbytes", "accelerate")
    )
    return [
        f"# {title}",
        "",
        f"- card: **{card.get('name', 'unknown')}** ({_f(card.get('memory_gib'), '.1f')} GiB, compute capability "
        f"{card.get('capability', '?')}); bf16 matmul peak measured **{_f(cal.get('peak_tflops'), '.0f')} TFLOP/s** "
        f"({cal.get('method', 'not measured')}; datasheet dense bf16 {_f(cal.get('datasheet_tflops'), '.0f')})",
        f"- versions: python {env.get('python')} · CUDA {env.get('cuda')} · {versions}",
        *host_lines(results.get("host")),
        f"- tunebench commit: `{env.get('tunebench_commit')}`"
        + (f" (source `{env['tunebench_source']}`)" if env.get("tunebench_source") else "")
        + f" · created {results.get('created')} · "
        f"command `{results.get('command')}`",
    ]


def render_speed_md(results: dict[str, Any]) -> str:
    """Markdown view of speed.json (the JSON is the source of truth)."""
    lines = header_lines(results, "Training speed: the suite's train() per backend")
    lines += _speed_settings_lines(results)
    rows = results.get("rows", [])
    for name, info in (results.get("shapes") or {}).items():
        lines += [f"## {name}: {info.get('params', 0):,} parameters, {info.get('weights')}", ""]
        lines += compact_table(SPEED_COLUMNS, [_speed_cells(r) for r in rows if r["shape"] == name])
        lines.append("")
    if results.get("ratios"):
        lines += repeats_section(results)
        lines += _ratio_lines(results["ratios"])
    lines += trace_section(rows)
    lines += render_scaling(results.get("scaling") or [])
    lines += find_best_section(results)
    lines += target_table(results.get("targets") or [])
    if results.get("notes"):  # what the person who ran it adds: conditions the numbers depend on
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def _speed_settings_lines(results: dict[str, Any]) -> list[str]:
    """The settings, data and backend lines, and the note on what the columns mean."""
    st = results.get("settings", {})
    lora = st.get("lora", {})
    lines = [
        f"- settings: {st.get('quantization')}; LoRA r={lora.get('r')} alpha={lora.get('alpha')} on "
        f"{', '.join(lora.get('targets', []))}; max length {st.get('max_length')}; {st.get('optimizer')}; "
        f"gradient checkpointing {st.get('gradient_checkpointing')}; warm-up {st.get('warmup_steps')} steps, then "
        f"{st.get('measured_steps_first_point')} measured steps at the first point and "
        f"{st.get('measured_steps_other_points')} at the others; first point "
        + (
            "= the seed's settings (2 × 4, 2048, r16)"
            if st.get("first_point_is_seed_settings")
            else "differs from the seed's settings (2 × 4, 2048, r16)"
        ),
    ]
    for name, d in (results.get("data") or {}).items():
        t = d.get("tokens", {})
        lines.append(
            f"- data ({name}): {d.get('conversations')} conversations of `{d.get('source')}` through "
            f"train/data.py ({d.get('template')} template); tokens per conversation p50 {t.get('p50')}, "
            f"p90 {t.get('p90')}, max {t.get('max')}; {d.get('truncated')} truncated at {d.get('max_length')}"
        )
    for b, note in st.get("backends", {}).items():
        lines.append(f"- `{b}`: {note}")
    title, note = tokenizer_note(results)
    return lines + [
        "",
        f"> **Random weights, {title}.** {note} Each shape is the published Llama 3.2 "
        "architecture with random bf16 weights (speed does not depend on their values; losses do, so ignore "
        "them). **MFU** = 6 · N · real tokens/s ÷ the "
        "measured matmul peak, N = all parameters with tied embeddings counted once; attention FLOPs and "
        "gradient-checkpointing recomputation are not counted. **Peak memory** = "
        "`torch.cuda.max_memory_allocated` over `trainer.train()` (the suite's trainer resets it after the "
        "model load): 4-bit weights, LoRA, optimizer states, activations and loss buffers; *steady* = the "
        "measured steps only; *reserved* = what the caching allocator held. Real tokens exclude padding; "
        "every row at one point draws the same batches (same seed, same data).",
        "",
    ]


SPEED_COLUMNS = [
    "backend",
    "repeat:",
    "batch × accum",
    "real tok/s:",
    "tok/s incl. padding:",
    "step s median (p10–p90)",
    "peak alloc GiB (steady):",
    "peak reserved GiB:",
    "MFU:",
    "status",
]


def _speed_cells(r: dict[str, Any]) -> list[Any]:
    """One measured row's cells (a failed or skipped row: its status and error in the last cell)."""
    label = (
        r["backend"]
        + ("" if r.get("gradient_checkpointing", True) else ", no ckpt")
        + (" (find-best)" if r.get("find_best") else "")
    )
    head = [label, r.get("repeat", 0) + 1, f"{r['batch_size']} × {r['grad_accum']}"]
    if r.get("status") != "ok":
        return head + [""] * 6 + [f"{r.get('status')}: {str(r.get('error', ''))[:160].replace('|', '/')}"]
    return head + [
        _f(r["real_tokens_per_s"]),
        _f(r["positions_per_s"]),
        f"{_f(r['step_s_median'], '.3f')} ({_f(r['step_s_p10'], '.3f')}–{_f(r['step_s_p90'], '.3f')})",
        f"{_f(r.get('peak_allocated_gib'), '.2f')} ({_f(r.get('steady_peak_allocated_gib'), '.2f')})",
        _f(r.get("peak_reserved_gib"), ".2f"),
        _f(r.get("mfu"), ".1%"),
        _speed_status(r),
    ]


def _speed_status(r: dict[str, Any]) -> str:
    """The status cell of a measured row: steps, tokens, and what else the row says about itself."""
    return (
        (f"**{r['cut_short']}** (feeds no ratio or target); " if r.get("cut_short") else "")
        + f"ok ({r['measured_steps']} steps, {r['real_tokens']:,} real tokens"
        + (f"; {r['compiled_blocks']} blocks compiled" if r.get("compiled_blocks") else "")
        + (
            f"; host waited on the GPU {r['sync_wait_share_median']:.0%} of a step, process CPU "
            f"{r['process_cpu_per_wall']:.2f} s/s"
            if r.get("sync_wait_share_median") is not None
            else ""
        )
        + (
            ""
            if r.get("mask_agreement") in (None, 1.0)
            else f"; Unsloth's mask = shared mask on {r['mask_agreement']:.0%} of conversations"
        )
        + ")"
    )


def _ratio_lines(ratios: list[dict[str, Any]]) -> list[str]:
    """Each row against hf in its own repeat."""
    cols = [
        "shape",
        "batch × accum",
        "backend",
        "repeat:",
        "real tok/s ×:",
        "peak alloc ×:",
        "peak reserved ×:",
        "same batches",
        "used",
    ]
    body = [
        [
            q["shape"],
            f"{q['batch_size']} × {q['grad_accum']}",
            q["backend"],
            q.get("repeat", 0) + 1,
            _f(q["real_tokens_per_s_ratio"], ".2f"),
            _f(q["peak_allocated_ratio"], ".2f"),
            _f(q["peak_reserved_ratio"], ".2f"),
            "yes" if q["same_tokens"] else "no",
            ("no: " + q["excluded"]) if q.get("excluded") else "yes",
        ]
        for q in ratios
    ]
    return [
        "## Ratios against hf, per repeat (the two rows of a repeat ran back to back)",
        "",
        *compact_table(cols, body),
        "",
    ]


def trace_section(rows: list[dict[str, Any]]) -> list[str]:
    """The profiled steps of each row that has them (``--profile-steps``): where a step's wall time went."""
    traced = [r for r in rows if r.get("status") == "ok" and r.get("trace")]
    if not traced:
        return []
    cols = [
        "shape",
        "backend",
        "repeat",
        "batch × accum",
        "profiled steps",
        "wall s/step",
        "GPU busy",
        "kernels busy",
        "GPU idle s/step",
        "kernels/step",
        "H→D s/step",
        "D→H s/step",
        "copy not hidden by a kernel s/step",
    ]
    body = [
        [
            r["shape"],
            r["backend"],
            r.get("repeat", 0) + 1,
            f"{r['batch_size']} × {r['grad_accum']}",
            t["profiled_steps"],
            t["wall_s_per_step"],
            f"{t['gpu_busy_share']:.1%}",
            f"{t['kernel_busy_share']:.1%}",
            t["gpu_idle_s_per_step"],
            t["kernels_per_step"],
            t["htod_s_per_step"],
            t["dtoh_s_per_step"],
            t["copy_exposed_s_per_step"],
        ]
        for r in traced
        for t in [r["trace"]]
    ]
    return [
        "## Where the step time goes (torch.profiler, steps after the measured ones)",
        "",
        "The GPU's busy share is the union of its kernels and copies over the window's wall time: well under "
        "100% means the GPU waited on the host. Copy time no kernel overlapped is what a step could wait on "
        "host↔device bandwidth for. The profiler adds overhead, so read the rows side by side; the measured "
        "steps above were not profiled.",
        "",
        table(body, cols),
        "",
    ]


def target_table(targets: list[dict[str, Any]]) -> list[str]:
    """The targets section: median [interval] over repeats, the verdict from the interval's conservative end, and
    that end's margin."""
    lines = [
        "## Targets",
        "",
        "Each value is the median over repeats with a bootstrap 95% interval; **met** only "
        "when the interval's conservative end clears the threshold, **inconclusive** when it straddles it or "
        "there was one repeat (no interval).",
        "",
    ]
    cols = [
        "target",
        "shape",
        "where",
        "median [95% interval]:",
        "repeats:",
        "verdict",
        "margin of the conservative end:",
    ]
    return lines + compact_table(cols, [_target_cells(t) for t in targets])


def _target_cells(t: dict[str, Any]) -> list[Any]:
    """One target's cells: its value (a share for an MFU target), repeats, verdict and margin."""
    pct = abs(t["threshold"]) < 1 and "MFU" in t["target"]

    def num(x: float | None) -> str:
        return "–" if x is None else (f"{x:.1%}" if pct else f"{x:,.2f}")

    val = num(t["value"]) + (f" [{num(t['ci'][0])}, {num(t['ci'][1])}]" if t.get("ci") else "")
    v = t.get("verdict") or {True: "met", False: "not met", None: "not measured"}[t["met"]]
    shown = {"met": "**met**", "not met": "**not met**", "inconclusive": "inconclusive"}.get(v, v)
    if t.get("note"):
        shown += f" ({t['note']})"
    margin = (
        "–"
        if t["margin"] is None
        else (f"{t['margin']:+.1%}" if pct else f"{t['margin']:+,.2f}")
        + ("" if t["margin_relative"] is None else f" ({t['margin_relative']:+.0%} of the threshold)")
    )
    reps = f"{t.get('repeats', 1)} of {t.get('repeats_asked', 1)}"
    return [t["target"], t["shape"], t["where"], val, reps, shown, margin]


def repeats_section(results: dict[str, Any]) -> list[str]:
    """Each backend's rate over repeats (median, min–max) and each ratio against hf over repeats (median of the
    paired per-repeat ratios, bootstrap interval)."""
    rows = []
    for x in results.get("row_summaries") or []:
        shape, backend, _, bs, ga = x["key"][:5]
        t, m = x["real_tokens_per_s"], x["peak_allocated_gib"]
        rows.append(
            [
                shape,
                backend,
                f"{bs} × {ga}",
                x["repeats"],
                f"{_f(t['median'])} ({_f(t['min'])}–{_f(t['max'])})",
                _f(m["median"], ".2f"),
                f"{x['left_out']}: {', '.join(x['left_out_why'])}" if x["left_out"] else "–",
            ]
        )
    ratios = []
    for q in results.get("ratio_summaries") or []:
        t, m = q["real_tokens_per_s_ratio"], q["peak_allocated_ratio"]
        ci = f" [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]" if t.get("ci") else " (one repeat: no interval)"
        ratios.append(
            [
                q["shape"],
                f"{q['batch_size']} × {q['grad_accum']}",
                q["backend"],
                t["repeats"],
                f"{_f(t['median'], '.2f')}{ci} ({_f(t['min'], '.2f')}–{_f(t['max'], '.2f')})",
                _f(m["median"], ".2f"),
            ]
        )
    return [
        "## Over repeats",
        "",
        f"{(results.get('settings') or {}).get('repeats', 1)} repeat(s), interleaved. Rows that failed or were "
        "cut short are left out.",
        "",
        *compact_table(REPEAT_COLUMNS, rows),
        "",
        *compact_table(RATIO_SUMMARY_COLUMNS, ratios),
        "",
    ]


REPEAT_COLUMNS = [
    "shape",
    "backend",
    "batch × accum",
    "repeats:",
    "real tok/s median (min–max):",
    "peak alloc GiB median:",
    "left out",
]
RATIO_SUMMARY_COLUMNS = [
    "shape",
    "batch × accum",
    "backend",
    "ratios used:",
    "real tok/s ÷ hf median [95% interval] (min–max):",
    "peak alloc ÷ hf median:",
]


def tokenizer_note(results: dict[str, Any]) -> tuple[str, str]:
    """What the token counts come from: Meta's Llama 3 tokenizer, or the SmolLM2 stand-in of older runs."""
    kinds = {str(i.get("tokenizer", "")) for i in (results.get("shapes") or {}).values()}
    if kinds and all(k.startswith("Llama 3") for k in kinds):
        return "Llama 3 tokenizer", (
            "Token counts come from Meta's Llama 3 tokenizer (llama-models 0.3.0 "
            "`tokenizer.model`, converted to a transformers tokenizer), as the real "
            "Llama 3.2 models count them."
        )
    return "stand-in tokenizer", (
        "Token counts come from a stand-in tokenizer (SmolLM2's vocabulary plus the "
        "Llama 3 special tokens), which splits text into more tokens than Llama 3's would."
    )


def find_best_section(results: dict[str, Any]) -> list[str]:
    """The --find-best choice per shape, with the config line that trains at it (empty without --find-best)."""
    best = results.get("find_best") or {}
    if not best:
        return []
    fb = (results.get("settings") or {}).get("find_best") or {}
    limit = fb.get("memory_limit_gib")
    lines = [
        "## Fastest setting (--find-best)",
        "",
        f"Swept in one {fb.get('backend')} process: micro-batch × layout (padded, padding-free, packed) × "
        f"gradient checkpointing, accumulation 1, {fb.get('measured_steps')} measured steps each, memory limit "
        + (f"{limit} GiB (the card capped there)" if limit else "the whole card")
        + ". The rows marked "
        "(find-best) above; the fastest whose peak reserved memory fits:",
        "",
    ]
    for shape, b in best.items():
        if b is None:
            lines.append(f"- {shape}: no setting ran within the limit")
            continue
        lines += [
            f"- {shape}: **{b['backend']} {b['batch_size']} × {b['grad_accum']}**, gradient checkpointing "
            f"{'on' if b['gradient_checkpointing'] else 'off'}: {_f(b['real_tokens_per_s'])} real tokens/s, MFU "
            f"{_f(b.get('mfu'), '.1%')}, peak reserved {_f(b.get('peak_reserved_gib'), '.2f')} GiB",
            "",
            f"      {b['config_line']}",
            "",
        ]
    return lines
