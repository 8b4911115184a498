"""What an adapter folder says about itself to the tools outside tunebench: adapter_config.json names the base by
the reference the user gave (hub id or packaged name, not this host's cache path), and README.md (the PEFT model
card) holds the run's config, data and training loss; ``tunebench run`` adds the evaluation's headline rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunebench.core.io import atomic_write_text, read_json, read_text
from tunebench.core.markdown import kv_table
from tunebench.core.numbers import fmt

EVALUATION_HEADING = "## Evaluation"


def base_reference(model: dict[str, Any]) -> str:
    """The base as adapter_config.json should name it: the hub id, packaged name or path the run was given
    (a manifest's ``model`` section, i.e. ``ModelSource.to_dict``)."""
    return str(model.get("ref") or model.get("path"))


def write_adapter_metadata(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Rewrite ``base_model_name_or_path`` in adapter_config.json and write README.md (the model card)."""
    folder = Path(folder)
    cfg_path = folder / "adapter_config.json"
    adapter_cfg = read_json(cfg_path, "save the adapter again")
    adapter_cfg["base_model_name_or_path"] = base_reference(manifest["model"])
    atomic_write_text(cfg_path, json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "README.md", model_card(manifest))


def model_card(m: dict[str, Any]) -> str:
    """The PEFT model card of an adapter, from its manifest: front matter, then config, data and training."""
    cfg, model = m.get("config") or {}, m.get("model") or {}
    lora, train, data = cfg.get("lora") or {}, cfg.get("train") or {}, cfg.get("data") or {}
    backend = (m.get("backend") or {}).get("name")
    ref = base_reference(model)
    front = ["---", "library_name: peft", "pipeline_tag: text-generation"]
    if model.get("kind") == "hub":  # the hub checks base_model against its ids; a local base has none
        front.append(f"base_model: {ref}")
    front += ["tags:", "- tunebench", "- lora", "- sft", "- trl"] + ([f"- {backend}"] if backend else []) + ["---"]
    config_rows = kv_table(
        [
            ("base model", f"`{ref}`"),
            ("base identity", model.get("identity")),
            ("chat template", (m.get("template") or {}).get("name")),
            ("backend", backend),
            (
                "LoRA",
                f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                f"rsLoRA={lora.get('use_rslora')}",
            ),
            ("target modules", ", ".join(lora.get("target_modules") or [])),
            ("optimizer steps", m.get("steps")),
            ("effective batch", m.get("effective_batch_size")),
            (
                "learning rate",
                f"{train.get('lr')} ({train.get('scheduler')}, "
                + (
                    f"{fmt(train['warmup_ratio'], pattern='{:.0%}')} of the updates warm-up)"
                    if train.get("warmup_ratio") is not None
                    else f"{train.get('warmup_steps')} warm-up)"
                ),
            ),
            ("max length", data.get("max_length")),
            ("seed", train.get("seed")),
        ]
    )
    splits = (m.get("data") or {}).get("splits") or {}
    data_rows = kv_table(
        [
            ("source", f"`{data['source']}`" if data.get("source") else None),
            *((f"{s} conversations", n) for s, n in splits.items()),
            ("fingerprint", (m.get("data") or {}).get("fingerprint")),
        ]
    )
    result_rows = kv_table(
        [
            ("final train loss", m.get("final_train_loss")),
            ("final validation loss", m.get("final_eval_loss")),
            ("real tokens/s", m.get("tokens_per_s")),
            ("wall time (s)", m.get("wall_time_s")),
            (
                "trainable parameters",
                f"{m.get('trainable_params'):,} ({m.get('trainable_percent')}%)" if m.get("trainable_params") else None,
            ),
        ]
    )
    parts = [
        "\n".join(front),
        f"# {m.get('name')}: LoRA adapter for `{ref}`",
        "Trained with tunebench (`tunebench run`/`train`); `manifest.json` beside this card holds the full "
        "resolved config, versions and loss history. Losses are over assistant tokens only.",
        "## Training",
        config_rows or "",
        "## Data",
        data_rows or "",
        "## Training results",
        result_rows or "",
        "## Use",
        f"`tunebench chat --model {ref} --adapter path/to/this/adapter`",
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{ref}")\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/adapter")\n```'
        if model.get("kind") == "hub"
        else "",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def with_evaluation(folder: str | Path, rows: str, report: str | Path) -> str | None:
    """The card with the evaluation's headline table at its end (replacing an earlier one); None without a card.

    Raises:
        RunFileError: a card that cannot be read (not UTF-8, too large).
    """
    card = Path(folder) / "README.md"
    if not card.exists():
        return None
    fix = "restore the adapter's model card from a copy, or delete it (the adapter then has no card)"
    text = read_text(card, fix).split("\n" + EVALUATION_HEADING + "\n")[0].rstrip("\n")
    return (
        f"{text}\n\n{EVALUATION_HEADING}\n\nBase vs this adapter on the run's held-out test "
        f"split, probes and lm-eval tasks (the run's `{Path(report).name}`, beside this "
        f"folder):\n\n{rows.strip()}\n"
    )


def append_evaluation(folder: str | Path, rows: str, report: str | Path) -> None:
    """Put the evaluation's headline table at the end of the card (replacing an earlier one)."""
    text = with_evaluation(folder, rows, report)
    if text is not None:
        atomic_write_text(Path(folder) / "README.md", text)
