"""Training with both backends on CPU: real TRL trainer, real packaged model and data, real checkpoints."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tunebench.core.config import load_config
from tunebench.core.config_build import dump_yaml
from tunebench.core.errors import RunExistsError, TrainingError
from tunebench.core.io import sha256_file
from tunebench.train.checkpoints import latest_checkpoint
from tunebench.train.trainer import train

pytestmark = pytest.mark.slow  # each test trains a model in a child process

SMALL = [
    "data.max_train=16",
    "data.max_validation=4",
    "data.max_test=8",
    "data.max_length=128",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.warmup_steps=0",
    "train.lr=1e-3",
    "train.eval_every=0",
    "train.logging_steps=1",
]


def tiny_cfg(model_dir, *extra):
    return load_config(
        "smoke",
        [
            f"model.ref={model_dir}",
            "train.backend=hf",
            "train.max_steps=6",
            "train.save_every=2",
            "train.gradient_checkpointing=false",
            *SMALL,
            *extra,
        ],
    )


class Capture(TrainerCallback):
    """Keeps what the trainer hands its callbacks, for assertions after training."""

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
        self.batch = next(iter(train_dataloader))

    def on_train_end(self, args, state, control, model=None, **kw):
        self.model = model


def test_hf_backend_trains_lora_only_on_assistant_tokens(tmp_path, smol_source):
    cfg = load_config(
        "smoke", ["train.backend=hf", "train.max_steps=2", "train.save_every=0", *SMALL, "train.eval_every=1"]
    )
    cap = Capture()
    res = train(cfg, tmp_path / "run", extra_callbacks=[cap])
    m = res.manifest
    # labels are exactly the shared assistant mask, shifted by nothing: label == input id where trained
    batch = cap.batch
    trained = batch["labels"] != -100
    assert trained.any() and (~trained).any()
    assert torch.equal(batch["labels"][trained], batch["input_ids"][trained])
    # base weights untouched, LoRA weights moved
    base = load_file(os.path.join(smol_source.path, "model.safetensors"))
    for name, p in cap.model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if key in base:
            assert torch.equal(p.detach().cpu(), base[key]), key
    lora_b = [p for n, p in cap.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad for p in lora_b) and any(p.abs().sum() > 0 for p in lora_b)
    # the run folder
    adapter = tmp_path / "run" / "adapter"
    for f in ("adapter_config.json", "adapter_model.safetensors", "manifest.json", "tokenizer_config.json"):
        assert (adapter / f).exists(), f
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert m["backend"]["name"] == "hf" and m["steps"] == 2
    assert all(math.isfinite(p["loss"]) for p in m["loss_history"]) and len(m["loss_history"]) == 2
    assert m["eval_history"] and math.isfinite(m["final_eval_loss"])
    # step 0 is the base (eval_on_start: the loss curve's reference); no second evaluation of the last step
    assert [h["step"] for h in m["eval_history"]] == [0, 1, 2]
    assert m["base_eval_loss"] == m["eval_history"][0]["eval_loss"] and math.isfinite(m["base_eval_loss"])
    assert 0 < m["trainable_percent"] < 10 and m["tokens_seen"] > 0 and m["tokens_per_s"] > 0
    for key in ("versions", "data", "peak_memory", "git_commit", "config", "model", "template", "wall_time_s"):
        assert key in m
    assert m["versions"]["transformers"] == "5.17.0" and m["data"]["splits"]["train"] > 0


def test_unsloth_backend_trains_in_its_own_process(tmp_path, smol_source):
    """Unsloth patches transformers at import, so it trains in a child process, as `tunebench run` does."""
    cfg = load_config(
        "smoke",
        [
            "train.backend=unsloth",
            "train.max_steps=2",
            "train.save_every=0",
            "train.gradient_checkpointing=true",
            *SMALL,
        ],
    )
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    weights = os.path.join(smol_source.path, "model.safetensors")
    before = sha256_file(weights)
    out = subprocess.run(
        [sys.executable, "-m", "tunebench", "train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # Unsloth was imported before transformers (the template lookup and the checkpoint search come after it)
    assert "should be imported before" not in out.stderr + out.stdout
    m = json.loads((tmp_path / "run" / "adapter" / "manifest.json").read_text())
    assert m["backend"]["name"] == "unsloth" and m["versions"]["unsloth"] == "2026.10.9"
    # Unsloth's train_on_responses_only labelled exactly the tokens of the shared mask
    assert m["backend"]["mask_agreement_with_shared"] == 1.0
    # train.padding_free=auto pads; train.compile_blocks=auto resolves to eager blocks on CPU, where nothing compiled
    assert m["config"]["train"]["padding_free"] is False and m["backend"]["padding_free_batches"] is False
    assert m["config"]["train"]["compile_blocks"] is False and m["backend"]["compiled_blocks"] == 0
    assert all(math.isfinite(p["loss"]) for p in m["loss_history"]) and m["steps"] == 2
    tensors = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in tensors.items())
    assert sha256_file(weights) == before  # the base model on disk is never written


def test_unsloth_marker_that_matches_nothing_fails_before_training(tmp_path):
    cfg = load_config("smoke", ["train.backend=unsloth", "train.max_steps=2", *SMALL])
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    script = textwrap.dedent(f"""
        import unsloth, sys
        import tunebench.data.conversations as d
        from tunebench.core.config import load_config
        from tunebench.train.backends import BackendError
        from tunebench.train.trainer import train
        orig = d.template_info
        def wrong(tok, name):
            info = orig(tok, name)
            info.response_part = "<|im_start|>nobody\\n"
            return info
        d.template_info = wrong
        try:
            train(load_config({str(tmp_path / "cfg.yaml")!r}), {str(tmp_path / "run")!r})
        except BackendError as e:
            print("REFUSED:", e)
            sys.exit(0)
        sys.exit("trained although no response marker matched")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REFUSED:" in out.stdout and "nobody" in out.stdout
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


class SigintAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to the trainer's handler


def test_ctrl_c_saves_a_checkpoint_and_resume_reproduces_the_curve(tmp_path, tiny_llama_dir):
    full = train(tiny_cfg(tiny_llama_dir), tmp_path / "full").manifest["loss_history"]
    cut = train(tiny_cfg(tiny_llama_dir), tmp_path / "cut", extra_callbacks=[SigintAt(3)])
    # the signal lands after step 3's bookkeeping: step 4 finishes, then the checkpoint is written
    assert cut.interrupted and cut.checkpoint.name == "checkpoint-4"
    assert not (tmp_path / "cut" / "adapter").exists()
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny_cfg(tiny_llama_dir), tmp_path / "cut")
    resumed = train(tiny_cfg(tiny_llama_dir), tmp_path / "cut", resume=True).manifest
    assert [p["step"] for p in resumed["loss_history"]] == [1, 2, 3, 4, 5, 6]
    # same seed, same data order, restored RNG and optimizer state: the curve matches to 1e-4 (stated tolerance)
    for a, b in zip(full, resumed["loss_history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), (a, b)
    assert (
        resumed["tokens_seen"]
        == train(tiny_cfg(tiny_llama_dir), tmp_path / "full", resume=True).manifest["tokens_seen"]
    )


class PoisonAt(TrainerCallback):
    """Blow up one LoRA weight after an update, as a diverging optimizer would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_llama_dir):
    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*checkpoint-2"):
        train(tiny_cfg(tiny_llama_dir), tmp_path / "run", extra_callbacks=[PoisonAt(3)])
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"]
    assert not (tmp_path / "run" / "adapter").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob(".staging*"))


def test_export_merged_loads_without_peft(tmp_path, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunebench.train.export import export_merged

    res = train(tiny_cfg(tiny_llama_dir, "train.max_steps=3", "train.save_every=0"), tmp_path / "run")
    out = export_merged(tmp_path / "run", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(res.adapter_dir))
    x = torch.randint(0, 1000, (2, 24))
    with torch.no_grad():
        a, b = merged(x).logits, tuned(x).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(x).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, plain, atol=1e-4)  # the adapter is really in there


def test_padding_free_gives_the_padded_loss(tmp_path, tiny_llama_dir):
    """One flattened row per batch (block-causal mask from position_ids) computes the same loss as padding."""
    args = ["train.max_steps=2", "train.save_every=0", "train.batch_size=4"]
    padded = train(tiny_cfg(tiny_llama_dir, *args), tmp_path / "padded").manifest
    free = train(tiny_cfg(tiny_llama_dir, *args, "train.padding_free=true"), tmp_path / "free").manifest
    for a, b in zip(padded["loss_history"], free["loss_history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-4)
    assert free["tokens_seen"] == padded["tokens_seen"]  # real tokens only, either way
    assert free["backend"]["padding_free_batches"] and not padded["backend"]["padding_free_batches"]


def test_packed_rows_give_the_padded_loss_on_assistant_tokens_only(tmp_path, tiny_llama_dir, packaged_raw):
    """TRL best-fit packing (several conversations per max_length row, position_ids restart per conversation)
    trains on the same assistant tokens and computes the same first-step loss as padded batches of the same
    conversations, and no conversation attends to the one packed before it."""
    from tunebench.data.standardize import standardize

    short = [
        r
        for r in packaged_raw.records[:2000]
        if standardize(r)[1] is None and sum(len(t["value"]) for t in r["conversations"]) < 500
    ][:10]
    src = tmp_path / "short.jsonl"
    src.write_text(
        "".join(json.dumps({"id": str(i), "conversations": r["conversations"]}) + "\n" for i, r in enumerate(short))
    )
    args = [
        "train.max_steps=1",
        "train.save_every=0",
        "train.batch_size=16",
        "data.max_length=512",
        f"data.source={src}",
        "data.max_validation=0",
        "data.max_test=0",
    ]
    cap = Capture()
    padded = train(tiny_cfg(tiny_llama_dir, *args), tmp_path / "padded").manifest
    packed = train(
        tiny_cfg(tiny_llama_dir, *args, "train.packing=true"), tmp_path / "packed", extra_callbacks=[cap]
    ).manifest
    assert packed["loss_history"][0]["loss"] == pytest.approx(padded["loss_history"][0]["loss"], abs=2e-4)
    assert packed["tokens_seen"] == padded["tokens_seen"]
    batch = cap.batch
    assert batch["input_ids"].shape[0] == 1  # one flattened row: no padding
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist()
    assert len(starts) == packed["data"]["splits"]["train"]  # every conversation restarts its positions
    assert len(starts) > (pos.numel() + 511) // 512  # and rows really hold several conversations
    trained = batch["labels"][0] != -100
    assert not trained[starts].any()  # no conversation is trained to follow the one before it
    assert torch.equal(batch["labels"][0][trained], batch["input_ids"][0][trained])
    # the packed row's logits equal each conversation's logits alone: no attention across conversations
    model = cap.model.eval()
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        bounds = starts + [pos.numel()]
        for a, b in list(zip(bounds, bounds[1:], strict=False))[:4]:
            alone = model(input_ids=batch["input_ids"][:, a:b]).logits[0]
            assert torch.allclose(together[a:b], alone, atol=1e-4)


def test_latest_checkpoint_is_the_highest_step(tmp_path):
    """transformers' rule (folders named checkpoint-N, the highest N), without importing transformers."""
    assert latest_checkpoint(tmp_path / "none") is None
    assert latest_checkpoint(tmp_path) is None
    from safetensors.torch import save_file

    for name in ("checkpoint-9", "checkpoint-120", "checkpoint-60", ".staging", "checkpoint-x"):
        (tmp_path / name).mkdir()  # complete ones: a trainer state and whole weights (tests/unit/test_checkpoints)
        (tmp_path / name / "trainer_state.json").write_text('{"global_step": 1}')
        save_file({"w": torch.zeros(2)}, str(tmp_path / name / "adapter_model.safetensors"))
    (tmp_path / "checkpoint-500").write_text("a file, not a checkpoint")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-120"


def test_auto_settings_follow_the_backend_that_really_trains(tmp_path):
    """compile_blocks=auto resolved for Unsloth on a GPU (a long run compiles its blocks); when Unsloth then fails
    to import and auto falls back to hf, the fallback's config says hf and no compile. Explicit values stay."""
    from tunebench.core.config_resolve import COMPILE_BLOCKS_MIN_STEPS, Machine, with_backend
    from tunebench.train.sft_args import sft_config

    gpu = Machine(cuda=True, bf16=True, world_size=1, unsloth_installed=True)
    cfg = load_config("smoke", ["train.backend=unsloth", f"train.max_steps={COMPILE_BLOCKS_MIN_STEPS}"], machine=gpu)
    assert cfg.train.compile_blocks is True and cfg.train.padding_free is False
    fallback = with_backend(cfg, "hf", "unsloth does not import here")
    assert fallback.train.backend == "hf" and fallback.resolution["train.backend"] == "unsloth does not import here"
    assert fallback.train.compile_blocks is False and fallback.resolution["train.compile_blocks"].startswith("hf")
    assert sft_config(fallback, tmp_path, "hf", False, torch.float32).padding_free is False
    assert cfg.train.backend == "unsloth" and cfg.train.compile_blocks is True  # the caller's config is not changed
    assert with_backend(cfg, "unsloth", "same") is cfg
    explicit = load_config("smoke", ["train.backend=unsloth", "train.padding_free=true"])
    assert sft_config(with_backend(explicit, "hf", "x"), tmp_path, "hf", False, torch.float32).padding_free is True


def test_compile_blocks_false_turns_unsloth_block_compile_off_while_training_only(monkeypatch):
    """Unsloth reads UNSLOTH_BLOCK_COMPILE at every decoder block call: false sets it to 0 for trainer.train() and
    restores what was there; true leaves Unsloth's own setting alone; an unresolved auto is refused."""
    from tunebench.core.config_schema import TrainConfig
    from tunebench.train.backends import BackendError
    from tunebench.train.backends.unsloth import UnslothBackend

    backend = UnslothBackend()
    for before in (None, "1"):
        if before is None:
            monkeypatch.delenv("UNSLOTH_BLOCK_COMPILE", raising=False)
        else:
            monkeypatch.setenv("UNSLOTH_BLOCK_COMPILE", before)
        with backend.training(TrainConfig(compile_blocks=False)):
            assert os.environ["UNSLOTH_BLOCK_COMPILE"] == "0"
        assert os.environ.get("UNSLOTH_BLOCK_COMPILE") == before
        with backend.training(TrainConfig(compile_blocks=True)):
            assert os.environ.get("UNSLOTH_BLOCK_COMPILE") == before
    with pytest.raises(BackendError, match="compile_blocks"):
        backend.training(TrainConfig(compile_blocks="auto"))


def test_training_shows_one_bar_and_logs_to_the_run_folder(tmp_path, tiny_llama_dir, capfd):
    """The terminal gets the progress bar (loss and tokens/s as its postfix) and no {'loss': ...} dict lines: those
    go to RUN/train.log. The adapter names its base as given (not a cache path) and carries a filled model card."""
    train(tiny_cfg(tiny_llama_dir, "train.max_steps=3", "train.save_every=0"), tmp_path / "run")
    out, err = capfd.readouterr()
    assert "{'loss'" not in out + err and "'train_runtime'" not in out + err
    assert "tok/s=" in err and "loss=" in err  # the bar's postfix
    lines = [json.loads(x) for x in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3] and any("train_runtime" in x for x in lines)
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama_dir)
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft") and "## Training results" in card
    from tunebench.core.numbers import fmt

    final = json.loads((adapter / "manifest.json").read_text())["final_train_loss"]
    assert re.search(rf"\| final train loss +\| {re.escape(fmt(final))} ", card)
