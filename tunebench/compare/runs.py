"""Base vs tuned from run folders: their results files read and compared.

The comparison lives in three rooms: ``compare.rows`` (one metric: paired statistics, verdict, MDE; judged rows),
``compare.comparison`` (two ``Results`` -> a ``Comparison``, pure; several adapters -> a ``Leaderboard``) and this
module: the run folder's results files, exported artifacts and served endpoints, read and compared (I/O, not pure).
Each name is imported from the module that defines it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.compare.comparison import Comparison, Leaderboard, check_same_inputs, compare, leaderboard
from tunebench.compare.rows import FEW_SAMPLES, MetricComparison, compare_metric, load_judge_results
from tunebench.core.errors import ComparisonError, MissingRunFile, RunFileError
from tunebench.core.io import read_yaml, short
from tunebench.core.runtimes import ARTIFACT_PREFIX, LLAMA_CPP, SERVED_PREFIX, is_served_label, label_artifact
from tunebench.evals.results import Results

# ----------------------------------------------------------------------------- run folders (I/O, not pure)


def load_run_results(run_dir: str | Path) -> dict[str, Results]:
    """``{"base", "tuned"}`` Results of a run folder.

    Raises:
        MissingRunFile: no such folder, or a results file is missing (says which stage to run).
        RunFileError: a results file is damaged, of another schema or of the wrong shape (names the field).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingRunFile(f"{run_dir}: no such run folder")
    out = {}
    for side in ("base", "tuned"):
        path = run_dir / "eval" / side / "results.json"
        if not path.exists():
            raise MissingRunFile(f"{path}: missing; evaluate the {side} model first (`tunebench eval {run_dir}`)")
        out[side] = Results.load(path)
    return out


def load_artifact_results(run_dir: str | Path) -> dict[str, Results]:
    """Exported artifacts' Results of a run folder, by type (``{"q8_0": ...}``), and served endpoints' by label
    (``{"served": ...}``); {} when none was evaluated."""
    out = {}
    for path in sorted((Path(run_dir) / "eval").glob(f"{ARTIFACT_PREFIX}*/results.json")):
        out[label_artifact(path.parent.name)] = Results.load(path)
    for path in sorted((Path(run_dir) / "eval").glob(f"{SERVED_PREFIX}*/results.json")):
        out[path.parent.name] = Results.load(path)
    return out


def identical_answers(a: Results, b: Results) -> dict[str, tuple[int, int]]:
    """Per sampling: how many probe answers of ``b`` equal ``a``'s, of those both have."""
    out: dict[str, tuple[int, int]] = {}
    ta, tb = a.artifacts.get("probe_transcripts", {}), b.artifacts.get("probe_transcripts", {})
    for pset, by_sampling in ta.items():
        for sampling, rows in by_sampling.items():
            other = {r["id"]: r["output"] for r in tb.get(pset, {}).get(sampling, [])}
            pairs = [(r["output"], other[r["id"]]) for r in rows if r["id"] in other]
            equal, total = out.get(sampling, (0, 0))
            out[sampling] = (equal + sum(x == y for x, y in pairs), total + len(pairs))
    return out


@dataclass
class ServedParity:
    """A served endpoint against the in-process llama.cpp scoring of the file the server lists."""

    served: str
    artifact: str
    gguf: str
    identical: dict[str, tuple[int, int]]
    """Per sampling: (probe answers identical, answers both have)."""
    comparison: Comparison | None
    """Δ = served − in-process, paired item by item; None when the two are not comparable (``why``)."""
    why: str = ""


def served_against_artifacts(
    results: dict[str, Results], alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
) -> list[ServedParity]:
    """Each served endpoint's results (label ``served*``) against in-process llama.cpp on the same GGUF, where the
    run has scored it: the "served = evaluated" check, answers and paired metrics."""
    out = []
    for label, served in results.items():
        if not is_served_label(label):
            continue
        name = Path(str(served.model.get("served_model", ""))).name
        for key, res in results.items():
            if is_served_label(key) or res.model.get("runtime") != LLAMA_CPP or res.model.get("gguf") != name:
                continue
            try:
                comp, why = compare(res, served, alpha, n_boot, seed, same_base=False), ""
            except ComparisonError as e:
                comp, why = None, str(e)
            out.append(ServedParity(label, key, name, identical_answers(res, served), comp, why))
    return out


def compare_artifacts(
    tuned: Results,
    artifacts: dict[str, Results],
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    min_n: int = FEW_SAMPLES,
) -> dict[str, Comparison]:
    """Each exported artifact against the adapter it was exported from, paired item by item.

    Rows read ``base`` = the adapter, ``tuned`` = the artifact, delta = artifact - adapter.

    Raises:
        ComparisonError: an artifact scored on other inputs, template or dtype (names the artifact).
    """
    out = {}
    for name, res in artifacts.items():
        try:
            out[name] = compare(tuned, res, alpha, n_boot, seed, same_base=False, min_n=min_n)
            out[name].rows += parity_rows(res, alpha, n_boot, seed, min_n)
            out[name].only_in_tuned = [m for m in out[name].only_in_tuned if not m.startswith("parity/")]
        except ComparisonError as e:
            raise ComparisonError(f"artifact {name!r}: {e}") from None
    return out


def parity_rows(
    artifact: Results, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0, min_n: int = FEW_SAMPLES
) -> list[MetricComparison]:
    """Rows of the artifact's parity metrics (evals.parity), each paired with a perfect copy's value.

    ``base`` reads the reference (KL 0, agreement 1, ratio 1), so a gate rule's ``max_regression`` on
    ``parity/kl_mean`` bounds the upper end of the KL's interval.
    """
    from tunebench.evals.parity import reference_side

    rows = []
    for m in artifact.metrics:
        if m.group != "parity" or m.details.get("reference") is None:
            continue
        items = artifact.items.get(m.items) if m.items else None
        ref, ref_items = reference_side(m, items)
        row = compare_metric(ref, m, ref_items, items, alpha, n_boot, seed, min_n)
        row.headline = True
        rows.append(row)
    return rows


def run_settings(run_dir: str | Path) -> dict[str, Any]:
    """alpha, n_boot, min_n and gate rules from a run's resolved config.yaml (defaults when absent)."""

    cfg: Any = {}
    path = Path(run_dir) / "config.yaml"
    fix = f"restore it from a copy ({Path(run_dir) / 'config.asked.yaml'} holds what the run asked for)"
    if path.exists():  # absent: results copied without their config read at the defaults; empty is never that
        cfg = read_yaml(path, fix, RunFileError)
        if not isinstance(cfg, dict) or not cfg:
            raise RunFileError(f"{path}: {'empty' if cfg is None else 'not a mapping of config sections'}; {fix}")
    section = lambda k: cfg.get(k) if isinstance(cfg.get(k), dict) else {}  # noqa: E731
    settings = {
        "name": cfg.get("name") or Path(run_dir).name,
        "alpha": section("report").get("alpha") or 0.05,
        "n_boot": section("eval").get("bootstrap_samples") or 2000,
        "min_n": section("report").get("min_n") or FEW_SAMPLES,
        "gate_rules": section("gate").get("rules"),
    }
    for key, field_name, kind in (
        ("alpha", "report.alpha", (int, float)),
        ("n_boot", "eval.bootstrap_samples", (int,)),
        ("min_n", "report.min_n", (int,)),
        ("gate_rules", "gate.rules", (str, type(None))),
    ):
        if type(settings[key]) not in kind:
            raise RunFileError(
                f"{path}: {field_name} is {short(settings[key])}, not a {kind[0].__name__}; fix the value "
                "or re-run `tunebench run`"
            )
    return settings


def compare_run(run_dir: str | Path, seed: int = 0) -> Comparison:
    """Load a run folder's results and compare them with the run's own alpha and bootstrap size."""
    res, settings = load_run_results(run_dir), run_settings(run_dir)
    return compare(
        res["base"],
        res["tuned"],
        settings["alpha"],
        settings["n_boot"],
        seed,
        judged=load_judge_results(run_dir),
        min_n=settings["min_n"],
    )


def leaderboard_from_runs(run_dirs: Sequence[str | Path], seed: int = 0, primary: str | None = None) -> Leaderboard:
    """``tunebench compare RUN_A RUN_B ...``: every run's adapter against the first run's base, ranked on ``primary``
    (default the first headline metric) and compared pairwise on it.

    Raises:
        ComparisonError: a run whose base model or evaluation inputs differ from the first run's, or an unknown
            primary metric.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    loaded = {Path(d): load_run_results(d) for d in run_dirs}
    first_dir, first = next(iter(loaded.items()))
    settings = run_settings(first_dir)
    tuned: dict[str, Results] = {}
    for d, res in loaded.items():
        try:
            check_same_inputs(first["base"], res["base"])
        except ComparisonError as e:
            raise ComparisonError(f"run {d} has a different base than {first_dir}: {e}") from None
        name = d.name if d.name not in tuned else str(d)
        tuned[name] = res["tuned"]
    return leaderboard(
        first["base"], tuned, settings["alpha"], settings["n_boot"], seed, primary=primary, min_n=settings["min_n"]
    )
