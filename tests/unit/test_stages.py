"""stages.json records each stage's input fingerprint and its outputs' SHA-256: an output cut short or replaced by
another run's file makes the stage run again (with a warning naming it), never read as this stage's."""

from __future__ import annotations

import json
import logging

from tunebench.app.stages import CONFIG_RECORD, Stages


def _stage(run, calls, text):
    def write() -> None:
        calls.append(text)
        (run / "out").mkdir(exist_ok=True)
        (run / "out" / "result.json").write_text(json.dumps({"value": text}), encoding="utf-8")

    return write


def test_a_cut_or_foreign_output_reruns_its_stage(tmp_path, caplog):
    run, calls = tmp_path, []
    out = run / "out" / "result.json"
    assert Stages(run).run("score", "fp1", [out], _stage(run, calls, "first"))
    recorded = json.loads((run / "stages.json").read_text())
    assert recorded["score"]["fingerprint"] == "fp1" and set(recorded["score"]["sha256"]) == {"out/result.json"}
    assert not Stages(run).run("score", "fp1", [out], _stage(run, calls, "again"))  # fresh: skipped
    assert calls == ["first"]

    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) // 2])  # cut short (a crash of the filesystem, a copy that stopped)
    with caplog.at_level(logging.WARNING):
        assert Stages(run).run("score", "fp1", [out], _stage(run, calls, "redone"))
    assert "is not the file stage score wrote" in caplog.text and str(out) in caplog.text
    assert json.loads(out.read_text()) == {"value": "redone"}

    out.write_text(json.dumps({"value": "from another run"}), encoding="utf-8")  # whole, valid, and foreign
    assert Stages(run).run("score", "fp1", [out], _stage(run, calls, "mine"))
    assert calls == ["first", "redone", "mine"]
    assert not Stages(run).run("score", "fp1", [out], _stage(run, calls, "skipped"))


def test_a_stages_file_from_before_checksums_still_skips_its_stages(tmp_path):
    """Published run folders record a plain fingerprint per stage: they stay fresh (no checksum to check)."""
    out = tmp_path / "out" / "result.json"
    out.parent.mkdir()
    out.write_text("{}", encoding="utf-8")
    (tmp_path / "stages.json").write_text('{"score": "fp1"}', encoding="utf-8")
    assert Stages(tmp_path).fresh("score", "fp1", out)
    assert not Stages(tmp_path).fresh("score", "fp2", out)


def test_stages_record_when_each_ran_and_name_the_ones_reused(tmp_path):
    run, calls = tmp_path, []
    out = run / "out" / "result.json"
    first = Stages(run)
    assert first.run("score", "fp1", [out], _stage(run, calls, "first")) and first.reuse_line() is None
    ran_at = json.loads((run / "stages.json").read_text())["score"]["ran_at"]
    assert ran_at.endswith("+00:00") and "T" in ran_at  # ISO 8601, UTC

    again = Stages(run)
    assert not again.run("score", "fp1", [out], _stage(run, calls, "skipped"))
    assert again.run("judge", "fpj", [], _stage(run, calls, "judged"))
    assert again.reused == ["score"] and calls == ["first", "judged"]
    assert again.reuse_line() == "reused (inputs unchanged; when each ran: stages.json): score"
    recorded = json.loads((run / "stages.json").read_text())
    assert recorded["score"]["ran_at"] == ran_at  # a reused stage keeps the time it ran
    # the stages, and the settings they were computed with (the run-folder check reads them)
    assert set(recorded) == {"score", "judge", CONFIG_RECORD} and recorded["judge"]["ran_at"] >= ran_at


def test_eval_of_a_run_reuses_its_current_results_and_says_so(tmp_path, capsys, smol_source):
    """`tunebench eval RUN` computes nothing whose saved results were made from the same model, adapter, data and
    settings (the fingerprints `tunebench run` records in stages.json): one line says so, the report is re-rendered.
    Another setting or another adapter makes the side stale (`--force` recomputes either way: test_pipeline.py)."""
    import synthetic

    from tunebench.app.cli import main
    from tunebench.app.stages import Fingerprints
    from tunebench.core.config import load_config

    run = synthetic.write_run(tmp_path / "run", *synthetic.make_pair("improved"))
    manifest = synthetic.manifest()
    (run / "adapter").mkdir()
    (run / "adapter" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    contamination = run / "eval" / "contamination.json"
    contamination.write_text(json.dumps({"n": 0, "sets": {}}), encoding="utf-8")
    base, tuned = run / "eval" / "base" / "results.json", run / "eval" / "tuned" / "results.json"
    fps = Fingerprints.of(load_config(run / "config.yaml"), smol_source.identity)
    stages = Stages(run)
    stages.mark("contamination", fps.eval, [contamination])
    stages.mark("eval_base", fps.eval, [base])
    stages.mark("eval_tuned", fps.tuned(manifest), [tuned])
    before = {p: p.read_bytes() for p in (base, tuned, contamination, run / "stages.json")}

    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    why = "(same model, adapter, data and settings; --force recomputes)"
    assert [x for x in out.splitlines() if "reused" in x] == [f"base and tuned: reused {base}, {tuned} {why}"], out
    assert {p: p.read_bytes() for p in before} == before  # nothing evaluated, nothing rewritten
    assert f"report: {run / 'report.md'}" in out and (run / "report.md").is_file()
    # one side named as the run's own: the same results, reused
    model = ["--model", "packaged:smollm2-135m-instruct", "--data-from", str(run)]
    assert main(["eval", *model, "--adapter", str(run / "adapter")]) == 0
    assert main(["eval", *model]) == 0
    assert capsys.readouterr().out.splitlines() == [f"tuned: reused {tuned} {why}", f"base: reused {base} {why}"]

    other = Fingerprints.of(load_config(run / "config.yaml", ["eval.lm_eval_limit=3"]), smol_source.identity)
    assert not Stages(run).fresh("eval_base", other.eval, base)  # another setting: evaluated again
    assert not Stages(run).fresh("eval_tuned", fps.tuned({**manifest, "created": "later"}), tuned)  # another adapter
    assert Stages(run).fresh("eval_tuned", fps.tuned(manifest), tuned)
