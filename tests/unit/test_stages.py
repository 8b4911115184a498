"""stages.json records each stage's input fingerprint and its outputs' SHA-256: an output cut short or replaced by
another run's file makes the stage run again (with a warning naming it), never read as this stage's."""

from __future__ import annotations

import json
import logging

from tunebench.app.pipeline import Stages


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
    assert set(recorded) == {"score", "judge"} and recorded["judge"]["ran_at"] >= ran_at
