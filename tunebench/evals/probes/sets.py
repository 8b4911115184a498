"""Probe sets: declarative YAML prompts with objective checks, run on a model -> pass-rate metrics.

A probe set file (``evals/probes/default.yaml`` is the shipped one)::

    name: mine
    version: 1
    system: You are terse.            # optional system prompt for every probe
    macros: |                         # optional Jinja macros, callable from every template and check
      {% macro double(x) %}{{ x * 2 }}{% endmacro %}
    probes:
      - id: capital
        template: "What is the capital of {{ country }}?"
        vars:                         # a mapping of lists (cartesian product) or a list of mappings
          - {country: France, capital: Paris}
        checks:                       # all must pass
          - contains: "{{ capital }}"
            ignore_case: true
          - max_words: 40

Templates and check strings are Jinja rendered in an immutable sandbox with StrictUndefined: a probe
file cannot reach Python internals, and a misspelt variable is an error rather than an empty string.
Every error names the file and line and says what to change. The check kinds are in ``checks``
(``CHECK_KINDS``), the line-tracking YAML and the sandbox in ``template``; this module reads probe sets and
runs them.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunebench.core.config_schema import EvalConfig, SamplingConfig
from tunebench.core.errors import ProbeError
from tunebench.core.io import check_tree, fingerprint, load_yaml, package_path, read_yaml_text, short, yaml_problem
from tunebench.core.shards import Shard
from tunebench.core.stats import Z95
from tunebench.core.stats import wilson as wilson_interval
from tunebench.evals.families import MetricShape
from tunebench.evals.generation import Generator, TransformersGenerator
from tunebench.evals.probes.checks import Check, _parse_check
from tunebench.evals.probes.template import _ENV, _dym, _Loader, _plain, _Src, render
from tunebench.evals.prompting import samples_per_prompt
from tunebench.evals.results import SHARD_ORDER, Metric, Results

PROBES_DIR = package_path("evals", "probes")
SET_KEYS = ("name", "version", "description", "system", "macros", "probes")
PROBE_KEYS = ("id", "description", "template", "system", "vars", "checks")
_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")
PROBE_FIX = "fix the probe file (the shipped evals/probes/default.yaml shows every field)"
MAX_PROMPTS = 100_000
"""Prompts one probe's vars may expand to: a cartesian product of a few lists grows past any evaluation."""


# ----------------------------------------------------------------------------- probe sets


@dataclass
class Prompt:
    """One expanded probe: a conversation to answer and the checks its answer must pass."""

    id: str
    probe: str
    messages: list[dict[str, str]]
    checks: list[Check]
    vars: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The user turn."""
        return self.messages[-1]["content"]

    def evaluate(self, output: str) -> list[str]:
        """Why ``output`` fails, one reason per failing check (empty: it passes)."""
        return [r for c in self.checks if (r := c(output, self.text)) is not None]


@dataclass
class ProbeSet:
    """A loaded, fully expanded probe file."""

    name: str
    version: str
    path: str
    system: str | None
    prompts: list[Prompt]

    @property
    def probe_ids(self) -> list[str]:
        return list(dict.fromkeys(p.probe for p in self.prompts))

    @property
    def fingerprint(self) -> str:
        """Hash of everything that decides the scores: names, expanded messages and checks."""
        return fingerprint(
            {
                "name": self.name,
                "version": self.version,
                "prompts": [
                    {"id": p.id, "messages": p.messages, "checks": [c.spec() for c in p.checks]} for p in self.prompts
                ],
            }
        )


def shipped_sets() -> list[str]:
    """Names of the probe sets shipped in evals/probes/."""
    return sorted(p.stem for p in PROBES_DIR.glob("*.yaml"))


def load_probe_set(name_or_path: str | Path) -> ProbeSet:
    """Load and expand a probe set: a shipped name (``default``) or a YAML path.

    Raises:
        ProbeError: unknown name, unreadable file, bad YAML, or a bad probe (with file and line).
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = PROBES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = shipped_sets()
            raise ProbeError(
                f"unknown probe set {short(str(name_or_path))}{_dym(str(name_or_path), known)}: "
                f"pass a .yaml path or one of {', '.join(known)}"
            )
    text = read_yaml_text(path, PROBE_FIX, ProbeError)
    try:
        data = load_yaml(text, _Loader)
    except yaml.YAMLError as e:
        line, column, what = yaml_problem(e, text)
        where = f"{path}:{line}:{column}" if line else str(path)
        raise ProbeError(
            f"{where}: not valid YAML: {what}. Fix the syntax there (a value "
            "starting with '{{' or '{%' must be quoted or written as a | block)."
        ) from None
    check_tree(data, str(path), PROBE_FIX, ProbeError, text)
    return parse_probe_set(data, path)


def _check_keys(raw: dict, allowed: tuple[str, ...], path: Path, where: str) -> None:
    for key in raw:
        if key not in allowed:
            line = getattr(raw, "value_lines", {}).get(key, getattr(raw, "line", 0))
            raise ProbeError(
                f"{path}:{line}: {where}: unknown key {short(key)}{_dym(str(key), list(allowed))}; allowed: "
                f"{', '.join(allowed)}"
            )


def _var_rows(raw: Any, path: Path, line: int, where: str) -> list[dict[str, Any]]:
    """vars -> one dict per prompt: a mapping of lists expands as a cartesian product."""
    if raw is None:
        return [{}]
    if isinstance(raw, dict):
        lists = [v if isinstance(v, list) else [v] for v in raw.values()]
        if math.prod(len(v) for v in lists) > MAX_PROMPTS:
            raise ProbeError(
                f"{path}:{line}: {where}: vars expand to {math.prod(len(v) for v in lists):,} prompts, more than "
                f"{MAX_PROMPTS:,}; list the combinations you mean as a list of mappings"
            )
        return [_plain(dict(zip(raw, combo, strict=True))) for combo in itertools.product(*lists)]
    if isinstance(raw, list) and all(isinstance(r, dict) for r in raw):
        return [_plain(r) for r in raw]
    raise ProbeError(
        f"{path}:{line}: {where}: vars must be a mapping of lists (expanded as a cartesian "
        "product) or a list of mappings"
    )


def parse_probe_set(data: Any, path: str | Path) -> ProbeSet:
    """Validate and expand probe-set data read from ``path`` (see the module docstring)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ProbeError(f"{path}: the top level must be a mapping with name, version and probes")
    _check_keys(data, SET_KEYS, path, "probe set")
    name = data.get("name", path.stem)
    if not isinstance(name, (str, int, float)) or not _ID.match(str(name)):
        raise ProbeError(
            f"{path}: name {short(name)} may use only letters, digits, '_', '-' and '.' (it becomes part of metric "
            "names)"
        )
    name = str(name)
    macros: dict[str, Any] = {}
    if data.get("macros"):
        src = _Src.of(path, data, "macros")
        render(data["macros"], {}, src, "macros")  # reports syntax and sandbox errors at their lines
        module = _ENV.from_string(data["macros"]).module
        macros = {k: v for k, v in module.__dict__.items() if not k.startswith("_")}
    probes = data.get("probes")
    if not isinstance(probes, list) or not probes:
        raise ProbeError(f"{path}:{getattr(data, 'line', 1)}: probe set: needs a non-empty `probes:` list")
    set_system = data.get("system")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for i, raw in enumerate(probes):
        line = getattr(raw, "line", 0)
        if not isinstance(raw, dict):
            raise ProbeError(f"{path}:{line}: probes[{i}] must be a mapping with id, template and checks")
        pid = raw.get("id")
        where = f"probe {short(pid, 80)}" if pid else f"probes[{i}]"
        _check_keys(raw, PROBE_KEYS, path, where)
        if not isinstance(pid, str) or not _ID.match(pid) or pid in seen:
            raise ProbeError(f"{path}:{line}: {where}: needs a unique `id` of letters, digits, '_', '-', '.'")
        seen.add(pid)
        for key, kind in (("template", str), ("checks", list)):
            if not isinstance(raw.get(key), kind) or not raw[key]:
                raise ProbeError(f"{path}:{line}: {where}: needs a non-empty `{key}`")
        rows = _var_rows(raw.get("vars"), path, getattr(raw, "value_lines", {}).get("vars", line), where)
        if not rows:
            raise ProbeError(f"{path}:{line}: {where}: vars expand to no prompts (an empty list?)")
        system = raw.get("system", set_system)
        for j, row in enumerate(rows):
            ctx = {**macros, **row}
            label = where if "vars" not in raw else f"{where} (vars {short(row)})"
            text = render(raw["template"], ctx, _Src.of(path, raw, "template"), label).strip()
            checks = [_parse_check(c, ctx, path, label) for c in raw["checks"]]
            messages = ([{"role": "system", "content": str(system)}] if system else []) + [
                {"role": "user", "content": text}
            ]
            prompts.append(Prompt(pid if "vars" not in raw else f"{pid}[{j}]", pid, messages, checks, dict(row)))
    return ProbeSet(name, str(data.get("version", "1")), str(path), set_system, prompts)


# ----------------------------------------------------------------------------- running


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k passes out of n (reports.stats); an empty set says nothing: (0, 1)."""
    return (0.0, 1.0) if n == 0 else wilson_interval(k, n, z)


def pass_rate(name: str, items: list[dict[str, Any]], details: dict[str, Any]) -> Metric:
    """A pass-rate metric of pass/fail items with its Wilson interval (``tunebench merge`` rebuilds it here too)."""
    k, n = int(sum(i["num"] for i in items)), len(items)
    low, high = wilson(k, n)
    return Metric(
        name=name,
        value=k / n if n else float("nan"),
        higher_is_better=True,
        n=n,
        unit="samples",
        ci_low=low,
        ci_high=high,
        ci_method="wilson",
        aggregate="mean",
        group="probes",
        details={"passed": k, **details},
    )


def run_probes(
    loaded: Any,
    probe_sets: list[ProbeSet | str],
    samplings: list[SamplingConfig],
    batch_size: int = 32,
    seed: int = 1234,
    cache_dir: str | Path | None = None,
    label: str = "base",
    use_cache: bool = True,
    progress: bool = False,
    cache_implementation: str = "auto",
    generator: Generator | None = None,
    shard: Shard | None = None,
) -> Results:
    """Generate every probe under every sampling setting and score the answers.

    Args:
        loaded: an ``evals.modeling.Loaded``.
        probe_sets: ProbeSets, shipped names or YAML paths.
        samplings: decoding settings; each set runs under each.
        batch_size: answers per generate call (all samples of all prompts of all sets share the batches).
        seed: base seed (give base and tuned the same one: their samples are then paired).
        cache_dir: generation cache folder (default: the shared cache under ``cache_root()``).
        label: ``base`` or ``tuned``.
        use_cache: False regenerates everything.
        progress: show progress bars.
        cache_implementation: decode loop for generation (``auto``: see ``decode_loops.decode_path``).
        generator: the decode path (``generation.Generator``: llama.cpp's, an endpoint's); None = transformers'
            on ``loaded`` (``TransformersGenerator`` with the arguments above).
        shard: only this shard's batches (``core.shards``), on transformers (not ``generator``): metrics over its
            samples, every metric's item ids in unsharded order in ``artifacts["shard_order/probes"]``.

    Returns:
        A partial Results: ``probes/<set>/<sampling>/pass_rate`` and ``.../<probe>/pass_rate`` metrics with
        per-item records ``{"id": "<prompt>#<sample>", ...}``; transcripts and generation statistics in
        artifacts; set fingerprints, sampling settings and seed in inputs.

    Raises:
        ProbeError: a bad probe set, or two sets / samplings with the same name.
    """
    sets = [s if isinstance(s, ProbeSet) else load_probe_set(s) for s in probe_sets]
    if generator is None:  # a shard's batches: transformers' generator only (it is built with the shard)
        generator = TransformersGenerator(
            loaded, batch_size, cache_dir, use_cache, cache_implementation, progress, shard
        )
    for kind, names in (("probe set", [s.name for s in sets]), ("sampling", [s.name for s in samplings])):
        if len(set(names)) != len(names) or any("/" in n for n in names):
            raise ProbeError(f"{kind} names {names} must be unique and free of '/' (they form metric names)")
    results = Results(
        label=label,
        model=loaded.identity(),
        inputs={
            "probe_sets": {
                s.name: {"fingerprint": s.fingerprint, "version": s.version, "prompts": len(s.prompts)} for s in sets
            },
            "probe_sampling": [asdict(s) for s in samplings],
            "probe_seed": seed,
        },
    )
    transcripts: dict[str, dict[str, list]] = {}
    stats: dict[str, dict[str, dict]] = {}
    for smp in samplings:
        # one pool per sampling: every sample of every prompt of every set fills the same batches
        pool = [p.messages for ps in sets for p in ps.prompts]
        gen = generator.generate(pool, smp, seed)
        shared = _generation_stats(gen, batch_size, len(pool) * samples_per_prompt(smp), sets)
        results.timings[f"probes/{smp.name}/generate_s"] = gen.seconds
        offset = 0
        for ps in sets:
            outs_of = gen.samples[offset : offset + len(ps.prompts)]
            counts_of = gen.token_counts[offset : offset + len(ps.prompts)]
            keep = None if gen.answered is None else {(i - offset, s) for i, s in gen.answered}
            offset += len(ps.prompts)
            transcripts.setdefault(ps.name, {})[smp.name] = _score_set(results, ps, smp, outs_of, counts_of, keep)
            stats.setdefault(ps.name, {})[smp.name] = shared  # the generate() call that served all sets
    results.artifacts["probe_transcripts"] = transcripts
    results.artifacts["probe_generation"] = stats
    if shard is not None:
        results.artifacts[f"{SHARD_ORDER}/probes"] = item_order(sets, samplings)
    return results


def item_order(sets: list[ProbeSet], samplings: list[SamplingConfig]) -> dict[str, list[str]]:
    """Every probe metric's item ids, in the order an unsharded run lists them (``tunebench merge`` restores it)."""
    out: dict[str, list[str]] = {}
    for smp in samplings:
        for ps in sets:
            prefix = f"probes/{ps.name}/{smp.name}"
            ids = [(p.probe, f"{p.id}#{s}") for p in ps.prompts for s in range(samples_per_prompt(smp))]
            out[f"{prefix}/pass_rate"] = [i for _, i in ids]
            for pid in ps.probe_ids:
                out[f"{prefix}/{pid}/pass_rate"] = [i for probe, i in ids if probe == pid]
    return out


def _generation_stats(gen: Any, batch_size: int, answers: int, sets: list[ProbeSet]) -> dict[str, Any]:
    """What the one generate() call of a sampling cost, recorded under every set it served."""
    return {
        "new_tokens": gen.new_tokens,
        "seconds": gen.seconds,
        "tokens_per_s": gen.tokens_per_s,
        "cache_hits": gen.cache_hits,
        "cache_misses": gen.cache_misses,
        "generate_calls": gen.generate_calls,
        "batch_size": batch_size,
        "answers": answers,
        "sets": [ps.name for ps in sets],
    }


def _score_set(
    results: Results,
    ps: ProbeSet,
    smp: SamplingConfig,
    outs_of: list[list[str]],
    counts_of: list[list[int]],
    keep: set[tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Check every answer of one set under one sampling (of a shard: the (prompt, sample) pairs in ``keep``); add
    its pass rates (the set's and each probe's, those with answers) to ``results`` and return its transcript rows."""
    items: list[dict[str, Any]] = []
    by_probe: dict[str, list[dict[str, Any]]] = {pid: [] for pid in ps.probe_ids}
    rows = []
    for k, (p, outs, counts) in enumerate(zip(ps.prompts, outs_of, counts_of, strict=True)):
        for s, (text, n_tok) in enumerate(zip(outs, counts, strict=True)):
            if keep is not None and (k, s) not in keep:
                continue
            failed = p.evaluate(text)
            item = {"id": f"{p.id}#{s}", "num": 0.0 if failed else 1.0, "den": 1}
            items.append(item)
            by_probe[p.probe].append(item)
            rows.append(
                {
                    "id": item["id"],
                    "probe": p.probe,
                    "prompt": p.text,
                    "output": text,
                    "passed": not failed,
                    "failed": failed,
                    "new_tokens": n_tok,
                }
            )
    prefix = f"probes/{ps.name}/{smp.name}"
    common = {
        "set": ps.name,
        "set_version": ps.version,
        "sampling": smp.name,
        "samples_per_prompt": samples_per_prompt(smp),
    }
    if items:  # a shard may hold none of a set's or a probe's samples
        results.add(pass_rate(f"{prefix}/pass_rate", items, common), items)
    for pid, its in by_probe.items():
        if its:
            results.add(pass_rate(f"{prefix}/{pid}/pass_rate", its, {**common, "probe": pid}), its)
    return rows


def produced(settings: EvalConfig) -> list[MetricShape]:
    """The family's metrics (evals.families): probes/<set>/<sampling>/..., one per probe set and sampling."""
    sets = [load_probe_set(name).name for name in settings.probe_files]
    samplings = [smp.name for smp in settings.probe_sampling]
    return [MetricShape(("probes", s, smp), higher_is_better=True) for s in sets for smp in samplings]
