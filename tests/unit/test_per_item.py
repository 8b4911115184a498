"""The report's per-item view (issue 40 item 6): answers side by side with the judge's verdict, the items that changed
most with links to their records, the metrics that could not be measured, and thin breakdown rows folded into a line.
Data first: per_item.json is written beside comparison.json, then rendered."""

from __future__ import annotations

import json

import pytest
import synthetic  # tests/fixtures/synthetic.py
import yaml

from tunebench.app import cli
from tunebench.compare.comparison import compare
from tunebench.compare.per_item import (
    JUDGMENTS,
    PerItem,
    load_per_item,
    per_item,
    per_item_of_run,
    record_lines,
)
from tunebench.core.errors import RunFileError
from tunebench.reports.render import render_report


def _record_at(run, link: str) -> dict:
    """The JSON record a flip's link points at: the object that opens on the anchored line."""
    path, line = link.split("#L")
    lines = (run / path).read_text(encoding="utf-8").splitlines()
    start = int(line) - 1
    assert lines[start].strip() == "{", lines[start]
    end = next(k for k in range(start, len(lines)) if lines[k].strip() in ("}", "},"))
    return json.loads("\n".join(lines[start:end]) + "\n}")


def _judged_run(tmp_path, scenario="regressed", judge=True):
    base, tuned = synthetic.make_pair(scenario)
    run = synthetic.write_run(tmp_path / "run", base, tuned)
    if judge:
        records, judged = synthetic.judge_stage()
        (run / "eval" / "judge").mkdir(parents=True)
        judged.save(run / "eval" / "judge" / "results.json")
        (run / JUDGMENTS).write_text(
            "".join(json.dumps({k: v for k, v in r.items() if k != "line"}) + "\n" for r in records), encoding="utf-8"
        )
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["eval"]["judge"] = {"enabled": True, "model": "packaged:smollm2-135m-instruct"}
        cfg["report"]["side_by_side"] = 3
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run, base, tuned


def test_flips_name_the_items_that_changed_most_each_way_and_link_to_their_records(tmp_path):
    run, base, tuned = _judged_run(tmp_path, judge=False)
    comp = compare(base, tuned, n_boot=200)
    per = per_item_of_run(run, {"base": base, "tuned": tuned}, comp, flips=4)
    by_metric = {m.metric: m for m in per.flips}
    # top-level metrics with per-item records on both sides; breakdown rows share their parent's items
    assert list(by_metric) == [
        "perplexity/test",
        "lm_eval/tunebench_facts_mc/acc",
        "probes/default/greedy/pass_rate",
        "probes/default/seed/pass_rate",
    ]
    ppl = by_metric["perplexity/test"]
    assert ppl.kind == "continuous" and ppl.n == 60 and ppl.n_better + ppl.n_worse == 60
    assert ppl.n_worse > 50 and len(ppl.worse) == 4  # regressed: most conversations worse
    deltas = [abs(f.delta) for f in ppl.worse]
    assert deltas == sorted(deltas, reverse=True)
    every = sorted(
        abs(t - b)
        for b, t in zip(
            [synthetic_ppl(i) for i in base.items["perplexity/test"]],
            [synthetic_ppl(i) for i in tuned.items["perplexity/test"]],
            strict=True,
        )
        if t > b
    )
    assert deltas[0] == pytest.approx(every[-1])  # the largest worsening is the first shown
    for f in ppl.worse:  # each link opens the item's own record, on each side
        assert f.delta > 0 and f.tuned == pytest.approx(f.base + f.delta)
        assert _record_at(run, f.base_link)["id"] == f.id and _record_at(run, f.tuned_link)["id"] == f.id
        assert f.base_link.startswith("eval/base/results.json#L") and f.tuned_link.startswith("eval/tuned/results.json")

    acc = by_metric["lm_eval/tunebench_facts_mc/acc"]
    assert acc.kind == "pass_fail" and (acc.n_better, acc.n_worse) == (0, 14) and len(acc.worse) == 4
    assert all((f.base, f.tuned) == (1, 0) for f in acc.worse)
    assert _record_at(run, acc.worse[0].tuned_link) == {"id": acc.worse[0].id, "num": 0, "den": 1}
    seed = by_metric["probes/default/seed/pass_rate"]  # regressed: fibonacci lost on both passing samples
    assert [f.id for f in seed.worse] == ["fibonacci#0", "fibonacci#1"] and seed.n_better == 0
    assert seed.worse[0].note == "expected the sequence 13, 21, 34"  # the tuned side's failed check


def synthetic_ppl(item: dict) -> float:
    import math

    return math.exp(item["num"] / item["den"])


def test_side_by_side_takes_the_judges_held_out_prompts_with_its_verdict(tmp_path):
    base, tuned = synthetic.make_pair("improved")
    records, judged = synthetic.judge_stage()
    comp = compare(base, tuned, n_boot=200, judged=judged)
    per = per_item(base, tuned, comp, records, side_by_side=5)
    assert per.side_by_side_source == "judge/heldout"
    assert [p.id for p in per.side_by_side] == [f"heldout/{k}" for k in range(5)]
    assert [p.verdict for p in per.side_by_side] == [
        "tuned better",
        "tuned better",
        "tuned better",
        "base better",
        "orders disagree (a tie)",
    ]
    first = per.side_by_side[0]
    assert first.prompt == "How do I boil an egg?" and first.base == "base answer 0: short."
    assert first.tuned == "tuned answer 0:\nlonger, on two lines." and first.link == f"{JUDGMENTS}#L1"
    assert per_item(base, tuned, comp, records, side_by_side=0).side_by_side == []

    text = render_report(comp, {"per_item": per})
    section = text.split("## Answers side by side")[1].split("\n## ")[0]
    assert "prompt set `heldout`" in section and "| Prompt " in section and "| Judge " in section
    row = next(line for line in section.splitlines() if "heldout/2" in line)  # a pipe in a prompt stays in its cell
    assert "Summarise the water cycle \\| in one line." in row and row.split("|")[-2].strip() == "tuned better"
    assert "tuned answer 0: longer, on two lines." in section  # one line per cell


def test_without_a_judge_the_sample_is_the_probes_greedy_answers_and_without_those_it_says_so(tmp_path):
    base, tuned = synthetic.make_pair("improved")
    comp = compare(base, tuned, n_boot=200)
    per = per_item(base, tuned, comp, None, side_by_side=2)
    assert per.side_by_side_source == "probes/default/greedy"
    assert [(p.id, p.verdict) for p in per.side_by_side] == [
        ("fibonacci#0", "probe checks: base pass, tuned pass"),
        ("capital_of_france#0", "probe checks: base pass, tuned pass"),
    ]
    text = render_report(comp, {"per_item": per})
    assert "No judge ran: the first 2 prompts of `probes/default/greedy`" in text and "| Checks " in text

    for res in (base, tuned):
        res.artifacts.pop("probe_transcripts")
    bare = per_item(base, tuned, comp, None)
    assert bare.side_by_side == [] and bare.side_by_side_source is None
    section = render_report(comp, {"per_item": bare}).split("## Answers side by side")[1].split("\n## ")[0]
    assert "No answers were saved for this run" in section and "eval.judge.enabled=true" in section
    assert "| Prompt" not in section
    assert "## Answers side by side" not in render_report(comp, {})  # no per-item view, no section


def test_a_metric_that_could_not_be_measured_leaves_the_headline_for_not_measured():
    base, tuned = synthetic.make_pair("improved")
    _, judged = synthetic.judge_stage()  # 1 of 4 planted pairs right: invalid
    comp = compare(base, tuned, n_boot=200, judged=judged)
    row = comp.row("judge/heldout/win_rate")
    assert row.headline and row.verdict == "invalid judge metric"
    text = render_report(comp, {})
    headline = text.split("## Headline")[1].split("\n## ")[0]
    assert "judge/heldout/win_rate" not in headline and "invalid judge metric" not in headline
    assert "`perplexity/test`" in headline
    section = text.split("## Not measured")[1].split("\n## ")[0]
    assert "| `judge/heldout/win_rate` | the judge got 1 of 4 planted pairs right (25%)" in section
    _, valid = synthetic.judge_stage(sanity_right=4)
    ok = compare(base, tuned, n_boot=200, judged=valid)
    text = render_report(ok, {})
    headline = text.split("## Headline")[1].split("\n## ")[0]
    assert "## Not measured" not in text and "`judge/heldout/win_rate`" in headline


def test_thin_breakdown_rows_fold_into_one_line_and_judged_ones_keep_their_table():
    comp = compare(*synthetic.make_pair("improved", seed_samples=12), n_boot=200)
    text = render_report(comp, {})
    greedy = text.split("### default · greedy")[1].split("\n### ")[0]
    seed = text.split("### default · seed")[1].split("\n## ")[0]
    folded = [line for line in greedy.splitlines() if "not judged" in line]
    assert len(folded) == 1 and folded[0].startswith("5 probes with fewer than 10 samples, not judged: `fibonacci` 1")
    assert "Per probe" not in greedy and "| `json_list`" not in greedy
    assert "Per probe:" in seed and "| `json_list`" in seed and "not judged" not in seed  # n = 12: a table row


def test_report_writes_per_item_json_beside_the_comparison_and_renders_it(tmp_path):
    run, _, _ = _judged_run(tmp_path, scenario="improved")
    assert cli.main(["report", str(run)]) == 0
    per = load_per_item(run / "per_item.json")
    assert per.side_by_side_source == "judge/heldout" and len(per.side_by_side) == 3  # report.side_by_side=3
    assert [m.metric for m in per.flips][0] == "perplexity/test"
    assert PerItem.from_dict(json.loads(json.dumps(per.to_dict()))) == per
    report = (run / "report.md").read_text(encoding="utf-8")
    order = [report.index(h) for h in ("## Headline", "## Not measured", "## Answers side by side", "## Perplexity")]
    assert order == sorted(order)
    flips = report.split("## Items that changed most")[1].split("\n## ")[0]
    link = flips.split("[tuned](")[1].split(")")[0]
    assert link.startswith("eval/tuned/results.json#L") and _record_at(run, link)["id"] in flips
    (run / "per_item.json").write_text('{"schema": "other"}')
    with pytest.raises(RunFileError, match="per_item.json: not a 'tunebench.per_item/1'"):
        load_per_item(run / "per_item.json")


def test_record_lines_find_each_items_record_or_nothing():
    text = json.dumps({"label": "x", "items": {"a/b": [{"id": "q#0", "num": 1, "den": 1}], "c": []}}, indent=2)
    assert record_lines(text) == {"a/b": {"q#0": 5}}  # line 5 opens the record: `      {`
    assert record_lines(json.dumps({"items": {"a": [{"id": "1"}]}})) == {}  # not indented: no anchors
