"""The rows of ``bench eval`` that set the suite beside another runner on the same loaded model: ``tunebench chat``
against raw ``generate`` with a streamer, and lm-eval's own HFLM against the suite's model class (loglikelihood
tasks, and generate_until)."""

from __future__ import annotations

import time
from typing import Any

from tunebench.bench.evalrows import CACHE, Messages
from tunebench.evals.lm_eval import model as lm_eval_model
from tunebench.evals.lm_eval.load import load_tasks, task_manager
from tunebench.evals.prompting import count_new_tokens, generation_kwargs, render_prompt


def chat_rows(loaded: Any, prompts: list[Messages], sampling: Any, answers: int) -> list[dict[str, Any]]:
    """``tunebench chat``'s answers against raw ``generate(cache_implementation="static")`` streaming the same
    prompts, one at a time (batch 1), same sampling: the suite through ``evals.chat.chat`` itself (scripted
    input, each prompt then /reset, a TextStreamer per answer, one decode-loop capture per answer counted in its
    time); raw with transformers' TextStreamer, after one untimed answer that compiles its step. Streamed text goes
    to a buffer, not the log."""
    import contextlib
    import io

    import torch  # heavy: torch, imported when needed
    from transformers import TextStreamer  # heavy: transformers, imported when needed

    from tunebench.evals.chat import chat

    users = [m[-1]["content"] for m in prompts[:answers]]
    script = iter([x for u in users for x in (u, "/reset")] + ["/exit"])
    timed: list[dict[str, Any]] = []
    with contextlib.redirect_stdout(io.StringIO()):
        chat(
            loaded,
            sampling,
            input_fn=lambda _: next(script),
            print_fn=lambda *a, **k: None,
            seed=3,
            on_answer=timed.append,
        )
    suite = timed[1:]  # the first answer pays the first-call costs, as raw's untimed one does
    tok, model = loaded.tokenizer, loaded.model
    kwargs = {**generation_kwargs(loaded, sampling), "cache_implementation": "static"}
    raw: list[dict[str, Any]] = []
    with contextlib.redirect_stdout(io.StringIO()):
        for i, u in enumerate(users):
            x = torch.tensor([render_prompt(tok, [{"role": "user", "content": u}])], device=model.device)
            streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            torch.manual_seed(i)
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), streamer=streamer, **kwargs)
            raw.append(
                {
                    "new_tokens": count_new_tokens(out[0, x.shape[1] :].tolist(), set(kwargs["eos_token_id"])),
                    "seconds": time.perf_counter() - t,
                }
            )
    raw = raw[1:]

    def row(path: str, answers_: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        new, seconds = sum(a["new_tokens"] for a in answers_), sum(a["seconds"] for a in answers_)
        return {
            "kind": "chat",
            "path": path,
            "sampling": sampling.name,
            "batch": 1,
            "answers": len(answers_),
            "max_new_tokens": sampling.max_new_tokens,
            "new_tokens": new,
            "seconds": round(seconds, 3),
            "new_tokens_per_s": round(new / seconds, 1) if seconds else None,
            "ms_per_token": round(1000 * seconds / max(1, new), 2),
            **extra,
        }

    return [
        row("tunebench chat", suite, decode_path=suite[0]["path"] if suite else None),
        row("raw generate(static) + TextStreamer", raw),
    ]


def lm_eval_loglikelihood_rows(
    loaded: Any, tasks: list[str], batch: int, limit: int | None, repeat: int = 0
) -> list[dict[str, Any]]:
    """Loglikelihood tasks (ARC-Easy, HellaSwag, PIQA by default, every document) through lm-eval 0.4.13's own HFLM
    and through the suite's model class, on the same loaded model: wall time of each and whether every metric came
    out equal. The order flips with each repeat, so neither runner always meets a cold process."""
    import lm_eval  # heavy: lm_eval, imported when needed
    from lm_eval.models.huggingface import HFLM  # heavy: lm_eval, imported when needed

    manager = task_manager(tasks)
    rows, values = [], {}
    runners = [
        ("lm-eval HFLM", lambda: HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch)),
        (
            "tunebench",
            lambda: lm_eval_model.model_class()(
                pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch, cache_implementation=CACHE
            ),
        ),
    ]
    for runner, make in runners[::-1] if repeat % 2 else runners:
        loaded_tasks = load_tasks(manager, tasks)
        documents = sum(
            len(t.eval_docs) if limit is None else min(limit, len(t.eval_docs)) for t in loaded_tasks.values()
        )
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=make(),
            tasks=list(loaded_tasks.values()),
            limit=limit,
            task_manager=manager,
            bootstrap_iters=0,
            log_samples=False,
        )
        seconds = time.perf_counter() - t0
        values[runner] = {
            f"{task}/{metric}": v
            for task, res in (out.get("results") or {}).items()
            for metric, v in res.items()
            if isinstance(v, float) and "stderr" not in metric
        }
        rows.append(
            {
                "kind": "lm-eval-ll",
                "runner": runner,
                "tasks": ",".join(tasks),
                "documents": documents,
                "batch": batch,
                "seconds": round(seconds, 2),
                "metrics": values[runner],
            }
        )
    a, b = values["lm-eval HFLM"], values["tunebench"]
    diff = max((abs(a[k] - b[k]) for k in a.keys() & b.keys()), default=None)
    for r in rows:
        r["same_metric_names"] = a.keys() == b.keys()
        r["max_metric_difference"] = diff
    return rows


def lm_eval_generation_rows(loaded: Any, batches: list[int]) -> list[dict[str, Any]]:
    """generate_until as GSM8K runs it, on the shipped tunebench_arith_gen task, wall time per setting, two ways side
    by side: lm-eval 0.4.13's own HFLM (transformers' dynamic cache, its default) and the suite's path
    (``evals.lm_eval.model``: fixed-shape batches, per-row stop strings, the decode loop ``auto`` picks)."""
    import lm_eval  # heavy: lm_eval, imported when needed
    from lm_eval.models.huggingface import HFLM  # heavy: lm_eval, imported when needed

    manager = task_manager(["tunebench_arith_gen"])
    rows = []

    def timed(lm: Any, batch: int, runner: str) -> None:
        for attempt in ("cold", "warm"):
            tasks = load_tasks(manager, ["tunebench_arith_gen"])
            t = time.perf_counter()
            lm_eval.simple_evaluate(
                model=lm,
                tasks=list(tasks.values()),
                apply_chat_template=True,
                task_manager=manager,
                bootstrap_iters=0,
                log_samples=False,
            )
            rows.append(
                {
                    "kind": "lm-eval",
                    "runner": runner,
                    "task": "tunebench_arith_gen",
                    "documents": 80,
                    "batch": batch,
                    "cache": getattr(lm, "path", "dynamic"),
                    "pass": attempt,
                    "seconds": round(time.perf_counter() - t, 2),
                }
            )

    for batch in batches:
        timed(HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch), batch, "lm-eval HFLM")
        timed(
            lm_eval_model.model_class()(
                pretrained=loaded.model,
                tokenizer=loaded.tokenizer,
                batch_size=batch,
                generate_batch_size=batch,
                cache_implementation=CACHE,
            ),
            batch,
            "tunebench",
        )
    return rows
