"""train.report_to: validated like any config value, passed to TRL, and the evaluation's metrics logged to the same
tensorboard log dir, where tensorboard's own reader finds them."""

from __future__ import annotations

import pytest

from tunebench.core import tracking
from tunebench.core.config import load_config
from tunebench.core.errors import ConfigError
from tunebench.reports.tracking import log_metrics


def test_report_to_reads_one_name_or_a_list_and_refuses_unknown_ones():
    assert load_config("smoke", resolved=False).train.report_to == ["none"]
    assert load_config("smoke", ["train.report_to=tensorboard"], resolved=False).train.report_to == ["tensorboard"]
    both = load_config("smoke", ["train.report_to=[tensorboard, mlflow]"], resolved=False).train.report_to
    assert both == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        load_config("smoke", ["train.report_to=tensorbord"], resolved=False)
    with pytest.raises(ConfigError, match="report_to"):
        load_config("smoke", ["train.report_to=[none, wandb]"], resolved=False)


def test_sft_config_gets_the_trackers(tmp_path):
    from tunebench.train.sft_args import sft_config

    cfg = load_config("smoke", ["train.backend=hf", "train.report_to=tensorboard"])
    assert sft_config(cfg, tmp_path, "hf", False, None).report_to == ["tensorboard"]
    cfg = load_config("smoke", ["train.backend=hf"])
    assert sft_config(cfg, tmp_path, "hf", False, None).report_to == []  # "none": no integration callback


def test_trackers_stay_offline_in_the_run_folder(tmp_path, monkeypatch):
    for k in ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(k, raising=False)
    env = tracking.tracker_env(["tensorboard", "mlflow", "wandb"], tmp_path)
    assert env["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tracking" / "tensorboard")
    assert env["MLFLOW_TRACKING_URI"].startswith("file:") and env["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")  # what the user set wins
    assert "WANDB_MODE" not in tracking.tracker_env(["wandb"], tmp_path)


def test_evaluation_metrics_are_written_as_tensorboard_events_and_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    written = log_metrics(
        ["tensorboard"], tmp_path, {"eval/tuned/perplexity/test": 3.5, "eval/delta/perplexity/test": -0.25}, step=12
    )
    assert written == ["tensorboard"]
    acc = EventAccumulator(str(tracking.tensorboard_dir(tmp_path)))
    acc.Reload()
    assert {"eval/tuned/perplexity/test", "eval/delta/perplexity/test"} <= set(acc.Tags()["scalars"])
    (event,) = acc.Scalars("eval/tuned/perplexity/test")
    assert event.step == 12 and event.value == pytest.approx(3.5)
