"""`bench speed`: the orchestration of the training benchmark (setup, data, one worker per point and backend, results
rewritten after each), and `bench speed --find-best` (micro-batch x layout sweeps within a memory limit)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, NamedTuple

from tunebench.bench.host import host_snapshot
from tunebench.bench.markdown import write_speed
from tunebench.bench.metrics import SEED_POINT, config_line, find_best, parse_int_list, parse_names, points_of
from tunebench.bench.prepared import prepare_data
from tunebench.bench.repeats import interleave
from tunebench.bench.shapes import resolve_shapes
from tunebench.bench.spawn import EXIT_INCOMPLETE, EXIT_OK, Budget, setup, spawn, work_dir
from tunebench.bench.specs import SweepSpec, TrainSpec
from tunebench.bench.worker import BACKENDS, LAYOUTS, backend_name


def run_speed(args: argparse.Namespace) -> int:
    """The parent of ``bench speed``: setup, data, one worker per (point, shape, backend), results after each;
    with ``--find-best``, then the sweep worker of each shape and the fastest setting within the memory limit."""

    backends = parse_names(args.backends, BACKENDS, "--backends")
    sweep = parse_names(args.sweep_backends, BACKENDS, "--sweep-backends")
    points = points_of(parse_int_list(args.batch_size, "--batch-size"), parse_int_list(args.grad_accum, "--grad-accum"))
    candidates = find_best_candidates(args) if args.find_best else []
    parse_names(args.find_best_backend, BACKENDS, "--find-best-backend")  # bad input fails before any GPU work
    budget, work, out = Budget(args.budget_s), work_dir(args), Path(args.out)
    host_before = host_snapshot()
    shapes = resolve_shapes([x.strip() for x in args.shape.split(",") if x.strip()], args.tokenizer)
    results = new_results(args, backends, sweep, points)
    results["host"] = {"before": host_before}
    peak, sheet = setup_and_data(results, shapes, args, work, budget, data_need(args, points, candidates))
    write_speed(results, out)
    job = Job(args, shapes, work, budget, peak, sheet, out)
    run_points(results, job, points, backends, sweep)
    if args.world_size > 1:  # hf under torchrun at the first point, against its one-process row above
        run_ddp(results, job, points[0])
    if args.find_best:
        run_sweeps(results, shapes, args, candidates, work, budget, peak, sheet, out)
    results["host"]["after"] = host_snapshot()
    write_speed(results, out)
    ok = all(r["status"] == "ok" for r in results["rows"])
    print(
        f"\nresults: {out / 'speed.json'} and {out / 'speed.md'}"
        + ("" if ok else " (some rows failed or were skipped)")
    )
    return EXIT_OK if ok else EXIT_INCOMPLETE


class Job(NamedTuple):
    """What every training worker of one ``bench speed`` shares: the arguments, the shapes, where and how long
    to run, the card's peaks, and where the results go."""

    args: argparse.Namespace
    shapes: dict[str, dict[str, Any]]
    work: Path
    budget: Budget
    peak: float | None
    sheet: float | None
    out: Path


def run_points(
    results: dict[str, Any], job: Job, points: list[tuple[int, int]], backends: list[str], sweep: list[str]
) -> None:
    """One worker per (point, shape, backend, repeat): the first point with ``backends``, the others with
    ``sweep``; the results are rewritten after each."""
    args = job.args
    for i, (bs, ga) in enumerate(points):
        for name, s in job.shapes.items():
            # A B A B ...: each repeat runs every backend once, so drift over the call lands on all of them
            for k, backend in interleave(backends if i == 0 else sweep, args.repeats):
                steps = args.steps if i == 0 else args.sweep_steps
                label = f"{name}-{backend}-{bs}x{ga}" + (f"-r{k}" if args.repeats > 1 else "")
                spec = train_spec(args, s, name, backend, label, job.work, job.peak, job.sheet, bs, ga, steps)
                row = {
                    "shape": name,
                    "backend": backend,
                    "point": i,
                    "repeat": k,
                    "batch_size": bs,
                    "grad_accum": ga,
                    "max_length": args.max_length,
                    "r": args.r,
                    "asked_steps": steps,
                }
                row.update(spawn(spec, job.work, job.budget))
                results["rows"].append(row)
                write_speed(results, job.out)


def run_ddp(results: dict[str, Any], job: Job, point: tuple[int, int]) -> None:
    """hf under torchrun (``--world-size``) at ``point``, one row per shape."""
    args, (bs, ga) = job.args, point
    for name, s in job.shapes.items():
        label = f"{name}-hf-{bs}x{ga}-ddp{args.world_size}"
        spec = dataclasses.replace(
            train_spec(args, s, name, "hf", label, job.work, job.peak, job.sheet, bs, ga, args.steps),
            gradient_checkpointing=True,  # the data-parallel row keeps the defaults, whatever --no-grad-ckpt says
            profile_steps=0,
            world_size=args.world_size,
        )
        row = {
            "shape": name,
            "backend": "hf",
            "point": 0,
            "batch_size": bs,
            "grad_accum": ga,
            "max_length": args.max_length,
            "r": args.r,
            "world_size": args.world_size,
        }
        row.update(spawn(spec, job.work, job.budget))
        results["rows"].append(row)
        write_speed(results, job.out)


def new_results(
    args: argparse.Namespace, backends: list[str], sweep: list[str], points: list[tuple[int, int]]
) -> dict[str, Any]:
    """The results document before anything ran: command, settings, and no rows."""
    first = {"batch_size": points[0][0], "grad_accum": points[0][1], "max_length": args.max_length, "r": args.r}
    return {
        "schema": "tunebench.speed/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "tunebench bench " + " ".join(args.argv),
        "settings": {
            "backends": {b: BACKENDS[b].what for b in dict.fromkeys(backends + (sweep if len(points) > 1 else []))},
            "points": [list(p) for p in points],
            "sweep_backends": sweep,
            "max_length": args.max_length,
            "warmup_steps": args.warmup,
            "measured_steps_first_point": args.steps,
            "measured_steps_other_points": args.sweep_steps,
            "profiled_steps": getattr(args, "profile_steps", 0),
            "repeats": args.repeats,
            "order": "interleaved: every backend once per repeat (A B A B ...)",
            "lora": {"r": args.r, "alpha": args.alpha, "targets": args.lora_targets.split(","), "dropout": 0.0},
            "quantization": "none (bf16 LoRA)" if args.no_4bit else "4-bit nf4 base weights, double quant (QLoRA)",
            "gradient_checkpointing": "off" if args.no_grad_ckpt else "on (Unsloth's offloaded variant on unsloth)",
            "optimizer": "adamw_8bit",
            "first_point_is_seed_settings": first == SEED_POINT,
            "seed_settings": SEED_POINT,
            "data": args.data,
        },
        "rows": [],
    }


def data_need(args: argparse.Namespace, points: list[tuple[int, int]], candidates: list[dict[str, Any]]) -> int:
    """Conversations to encode: enough for the longest job (a packed row holds several conversations)."""
    extra = getattr(args, "profile_steps", 0)
    need = max(
        (args.warmup + (args.steps if i == 0 else args.sweep_steps) + extra) * b * a for i, (b, a) in enumerate(points)
    )
    for c in candidates:  # a packed row of max_length holds up to ~8 typical conversations
        need = max(need, (args.warmup + args.sweep_steps) * c["batch_size"] * (8 if c["layout"] == "packed" else 1))
    need *= max(1, args.world_size)  # each data-parallel process reads its own conversations
    return need + need // 10 + 8  # a few conversations lose every assistant token at max_length and are dropped


def setup_and_data(
    results: dict[str, Any],
    shapes: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    work: Path,
    budget: Budget,
    need: int,
) -> tuple[float | None, float | None]:
    """Run the setup worker (card, peak, shapes), encode the data once per shape; returns (peak, datasheet)."""

    setup_res = setup(shapes, args, work, budget)
    results.update(
        card=setup_res["card"],
        environment=setup_res["environment"],
        calibration=setup_res.get("calibration"),
        shapes={n: s["info"] for n, s in shapes.items()},
    )
    data: dict[str, Any] = {}
    for name, s in shapes.items():
        s["prepared"], data[name], _ = prepare_data(
            s["path"], s["chat_template"], args.data, args.max_length, need, work
        )
    results["data"] = data
    cal = setup_res.get("calibration") or {}
    return cal.get("peak_tflops"), cal.get("datasheet_tflops")


def train_spec(
    args: argparse.Namespace,
    s: dict[str, Any],
    name: str,
    backend: str,
    label: str,
    work: Path,
    peak: float | None,
    sheet: float | None,
    bs: int,
    ga: int,
    steps: int,
) -> TrainSpec:
    """A training worker's job: one backend at one point on one shape."""
    return TrainSpec(
        label=label,
        shape=name,
        backend=backend,
        model_dir=s["path"],
        chat_template=s["chat_template"],
        prepared=str(s["prepared"]),
        data_source=args.data,
        batch_size=bs,
        grad_accum=ga,
        max_length=args.max_length,
        warmup=args.warmup,
        steps=steps,
        r=args.r,
        alpha=args.alpha,
        targets=args.lora_targets.split(","),
        load_in_4bit=not args.no_4bit,
        params=s["info"]["params"],
        peak_tflops=peak,
        datasheet_tflops=sheet,
        gradient_checkpointing=not args.no_grad_ckpt,
        profile_steps=getattr(args, "profile_steps", 0),
        run_dir=str(work / "runs" / label),
    )


# ----------------------------------------------------------------------------- --find-best


def find_best_candidates(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Layout x gradient checkpointing x micro-batch (ascending within each group: the sweep stops a group at
    its first micro-batch over the memory limit)."""
    layouts = parse_names(args.layouts, LAYOUTS, "--layouts")
    ckpt = parse_names(args.grad_ckpt, {"on": True, "off": False}, "--grad-ckpt")
    batches = sorted(set(parse_int_list(args.find_best_batches, "--find-best-batches")))
    return [
        {"layout": lay, "gradient_checkpointing": c == "on", "batch_size": b, "grad_accum": 1}
        for c in ckpt
        for lay in layouts
        for b in batches
    ]


def run_sweeps(
    results: dict[str, Any],
    shapes: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    candidates: list[dict[str, Any]],
    work: Path,
    budget: Budget,
    peak: float | None,
    sheet: float | None,
    out: Path,
) -> None:
    """One sweep worker per shape; its rows join the results (marked ``find_best``), then the choice is printed."""
    family = BACKENDS[parse_names(args.find_best_backend, BACKENDS, "--find-best-backend")[0]].backend
    for layout in dict.fromkeys(c["layout"] for c in candidates):
        name = backend_name(family, layout)
        results["settings"]["backends"].setdefault(name, BACKENDS[name].what)
    results["settings"]["find_best"] = {
        "backend": family,
        "candidates": candidates,
        "memory_limit_gib": args.memory_limit_gib,
        "measured_steps": args.sweep_steps,
        "warmup_steps": args.warmup,
    }
    for name, s in shapes.items():
        label = f"{name}-{family}-find-best"
        point = train_spec(args, s, name, family, label, work, peak, sheet, 1, 1, args.sweep_steps)
        spec = SweepSpec(
            **{
                **point.to_dict(),
                "kind": "sweep",
                "family": family,
                "candidates": candidates,
                "memory_limit_gib": args.memory_limit_gib,
                "deadline": budget.wall_deadline(),
            }
        )
        res = spawn(spec, work, budget, min_seconds=60)
        results["rows"] += sweep_rows(res, name, family, args)
        best = find_best([r for r in results["rows"] if r.get("shape") == name], args.memory_limit_gib)
        results.setdefault("find_best", {})[name] = None if best is None else best_summary(best)
        write_speed(results, out)
        print_best(name, results["find_best"][name])


def sweep_rows(res: dict[str, Any], name: str, family: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A sweep worker's rows as result rows (marked ``find_best``); one row that says why when it has none."""
    rows = res.get("rows") or []
    if not rows:
        rows = [
            {
                "backend": family,
                "layout": "-",
                "batch_size": 0,
                "grad_accum": 1,
                "status": res["status"],
                "error": res.get("error"),
            }
        ]
    return [
        dict(
            r,
            shape=name,
            point=None,
            find_best=True,
            max_length=args.max_length,
            r=args.r,
            asked_steps=args.sweep_steps,
        )
        for r in rows
    ]


def best_summary(best: dict[str, Any]) -> dict[str, Any]:
    """What the results keep of the fastest setting, with the config line that trains at it."""
    return {
        "backend": best["backend"],
        "layout": best.get("layout", "padded"),
        "batch_size": best["batch_size"],
        "grad_accum": best["grad_accum"],
        "gradient_checkpointing": best.get("gradient_checkpointing", True),
        "real_tokens_per_s": best["real_tokens_per_s"],
        "mfu": best.get("mfu"),
        "peak_reserved_gib": best.get("peak_reserved_gib"),
        "config_line": config_line(best),
    }


def print_best(name: str, b: dict[str, Any] | None) -> None:
    """The --find-best choice of one shape, on the terminal."""
    if b is None:
        print(f"\nfind-best ({name}): no setting ran within the limit")
        return
    print(
        f"\nfind-best ({name}): {b['backend']} {b['batch_size']}x{b['grad_accum']}, gradient checkpointing "
        f"{'on' if b['gradient_checkpointing'] else 'off'}: {b['real_tokens_per_s']:,.0f} real tokens/s"
        + (f", MFU {b['mfu']:.1%}" if b["mfu"] is not None else "")
        + f", peak reserved {b['peak_reserved_gib']} GiB\n  {b['config_line']}"
    )
