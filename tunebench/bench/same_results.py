"""Do two evaluation results agree item by item? For checking a data-parallel run against one process.

    python -m tunebench.bench.same_results ONE.json MANY.json [--out verdict.json] [--rel 1e-6]

Exit 0 when every item set matches (perplexity numerators within ``--rel``, everything else exactly),
1 when some differ, 2 when a file cannot be read. The verdict is JSON, one entry per item set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tunebench.core.io import atomic_write_json, read_json


def compare_items(one: list[dict[str, Any]], many: list[dict[str, Any]], rel: float) -> dict[str, Any]:
    """One item set of two results: same ids in the same order, same denominators, numerators within rel."""
    ids_one, ids_many = [i["id"] for i in one], [i["id"] for i in many]
    out: dict[str, Any] = {"n": len(one), "same_ids": ids_one == ids_many}
    if not out["same_ids"]:
        out["same"] = False
        out["only_one"] = sorted(set(ids_one) - set(ids_many))[:10]
        out["only_many"] = sorted(set(ids_many) - set(ids_one))[:10]
        return out
    pairs = list(zip(one, many, strict=True))
    rels = [abs(i["num"] - j["num"]) / max(abs(i["num"]), abs(j["num"]), 1e-12) for i, j in pairs]
    diffs = [i["id"] for (i, j), r in zip(pairs, rels, strict=True) if i["den"] != j["den"] or r > rel]
    out.update(
        differing=len(diffs),
        first_differing=diffs[:10],
        max_rel_diff=max(rels, default=0.0),
        bitwise=all(i == j for i, j in pairs),
        same=not diffs,
    )
    return out


def compare_results(one: dict[str, Any], many: dict[str, Any], rel: float = 1e-6) -> dict[str, Any]:
    """Compare two Results dicts (``results.json``) of the same model on the same inputs.

    Perplexity numerators (summed NLL) may differ by ``rel`` (floating-point reduction order); pass/fail items of
    probes and lm-eval must be equal; generated probe texts must be equal string for string.
    """
    sets: dict[str, Any] = {}
    for key in sorted(set(one["items"]) | set(many["items"])):
        if key not in one["items"] or key not in many["items"]:
            sets[key] = {"same": False, "missing_in": "one" if key not in one["items"] else "many"}
            continue
        tol = rel if key.startswith("perplexity/") else 0.0
        sets[key] = compare_items(one["items"][key], many["items"][key], tol)
    texts: dict[str, Any] = {}
    t1 = one.get("artifacts", {}).get("probe_transcripts", {})
    t2 = many.get("artifacts", {}).get("probe_transcripts", {})
    for probe_set in sorted(set(t1) | set(t2)):
        for setting in sorted(set(t1.get(probe_set, {})) | set(t2.get(probe_set, {}))):
            a = [x["output"] for x in t1.get(probe_set, {}).get(setting, [])]
            b = [x["output"] for x in t2.get(probe_set, {}).get(setting, [])]
            texts[f"{probe_set}/{setting}"] = {
                "n": len(a),
                "same": a == b,
                "differing": sum(x != y for x, y in zip(a, b, strict=False)) + abs(len(a) - len(b)),
            }
    metrics = {}
    m1 = {m["name"]: m["value"] for m in one["metrics"]}
    m2 = {m["name"]: m["value"] for m in many["metrics"]}
    for name in sorted(set(m1) | set(m2)):
        metrics[name] = {"one": m1.get(name), "many": m2.get(name)}
    same_inputs = one.get("inputs") == many.get("inputs")
    return {
        "schema": "tunebench.same_results/1",
        "world_sizes": [one.get("environment", {}).get("world_size"), many.get("environment", {}).get("world_size")],
        "devices": [one.get("environment", {}).get("device"), many.get("environment", {}).get("device")],
        "same_inputs": same_inputs,
        "rel_tolerance_perplexity": rel,
        "same": same_inputs and all(s["same"] for s in sets.values()) and all(t["same"] for t in texts.values()),
        "item_sets": sets,
        "probe_texts": texts,
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tunebench.bench.same_results", description=__doc__.split("\n\n")[0])
    p.add_argument("one", help="results.json of the one-process run")
    p.add_argument("many", help="results.json of the data-parallel run")
    p.add_argument("--out", help="write the verdict JSON here")
    p.add_argument("--rel", type=float, default=1e-6, help="relative tolerance of perplexity numerators")
    args = p.parse_args(argv)
    try:
        one, many = read_json(Path(args.one)), read_json(Path(args.many))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verdict = compare_results(one, many, args.rel)
    if args.out:
        atomic_write_json(Path(args.out), verdict)
    for key, s in verdict["item_sets"].items():
        if not key.startswith("probes/") or key.count("/") == 3:  # skip the per-probe subsets in the summary
            extra = f" max rel diff {s['max_rel_diff']:.2e}" if "max_rel_diff" in s else ""
            print(f"{'same' if s['same'] else 'DIFFERENT':9} {key} (n={s.get('n')}){extra}")
    for key, t in verdict["probe_texts"].items():
        print(f"{'same' if t['same'] else 'DIFFERENT':9} probe texts {key} (n={t['n']}, differing {t['differing']})")
    print(
        f"inputs {'same' if verdict['same_inputs'] else 'DIFFERENT'}; world sizes {verdict['world_sizes']}: "
        f"{'identical results' if verdict['same'] else 'results differ'}"
    )
    return 0 if verdict["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
