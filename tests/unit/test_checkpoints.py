"""--resume from a truncated checkpoint (train/checkpoints.py): the broken file is named and the previous complete
checkpoint is used, or TrainingError (exit 2) says there is none. Checkpoint folders built by hand: a real
safetensors file, a real torch.save zip, a trainer_state.json; no training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tunebench.core.errors import EXIT_INVALID_INPUT, TrainingError
from tunebench.train.checkpoints import checkpoint_problem, latest_checkpoint, require_resumable


def _checkpoint(root: Path, step: int) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"lora_A": torch.ones(4, 8), "lora_B": torch.zeros(8, 4)}, str(path / "adapter_model.safetensors"))
    torch.save({"state": {}, "param_groups": []}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "trainer_state.json", "optimizer.pt"])
def test_cut_file_of_latest_is_named_and_the_previous_used(tmp_path, caplog, name):
    previous, latest = _checkpoint(tmp_path, 6), _checkpoint(tmp_path, 12)
    assert latest_checkpoint(tmp_path) == latest
    _cut(latest / name)
    assert str(latest / name) in checkpoint_problem(latest)
    with caplog.at_level(logging.WARNING, logger="tunebench.train.checkpoints"):
        assert latest_checkpoint(tmp_path) == previous
    assert f"skipping checkpoint {latest}" in caplog.text and name in caplog.text
    require_resumable(tmp_path)  # something to resume: no error


def test_safetensors_cut_inside_its_header_and_missing_file_are_named(tmp_path):
    ckpt = _checkpoint(tmp_path, 3)
    weights = ckpt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    assert "adapter_model.safetensors is cut short" in checkpoint_problem(ckpt)
    weights.unlink()
    assert checkpoint_problem(ckpt).endswith("adapter_model.safetensors is missing")


def test_no_complete_checkpoint_refuses_resume_naming_each(tmp_path):
    a, b = _checkpoint(tmp_path, 6), _checkpoint(tmp_path, 12)
    _cut(a / "trainer_state.json")
    _cut(b / "adapter_model.safetensors", keep=0.9)
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(TrainingError) as err:
        require_resumable(tmp_path)
    assert err.value.exit_code == EXIT_INVALID_INPUT
    msg = str(err.value)
    assert "no complete checkpoint" in msg and "--overwrite" in msg
    assert str(a / "trainer_state.json") in msg and str(b / "adapter_model.safetensors") in msg


def test_no_checkpoints_at_all_is_a_fresh_start(tmp_path):
    require_resumable(tmp_path / "checkpoints")  # pipeline.run always passes --resume: nothing to resume is fine
    assert latest_checkpoint(tmp_path / "checkpoints") is None
