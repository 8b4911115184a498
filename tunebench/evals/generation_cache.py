"""The answer cache: generated answers on disk, keyed by everything that decides them, so that re-running an
unchanged evaluation generates nothing (``generation.generate``, the endpoint judge and the logprobs judge use it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from filelock import FileLock

from tunebench.core.config_schema import SamplingConfig
from tunebench.core.errors import InvalidInput
from tunebench.core.io import atomic_write_json, fingerprint, package_version, read_json
from tunebench.evals.prompting import Prompt, is_greedy, stop_token_ids
from tunebench.models.loading import template_sha

log = logging.getLogger(__name__)


class GenerationCache:
    """Answers on disk, one JSON file per (model, template, sampling, seed) group.

    Entries are keyed by the messages' fingerprint and the sample index. Writes merge with what is on
    disk under a lock and land through an atomic rename, so concurrent evaluations neither corrupt the
    file nor drop each other's entries.
    """

    def __init__(self, root: str | Path, group: dict[str, Any]):
        self.group = group
        self.path = Path(root) / f"{fingerprint(group)}.json"
        self.entries: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return {}
        except InvalidInput as e:
            # a damaged cache costs a regeneration, never a wrong answer
            log.warning("ignoring unreadable generation cache %s (%s); it will be rewritten", self.path, e)
            return {}
        ok = isinstance(data, dict) and data.get("group") == self.group  # else a foreign or damaged file
        return data.get("entries", {}) if ok else {}

    @staticmethod
    def key(prompt: Prompt, sample: int) -> str:
        return f"{fingerprint(prompt)}#{sample}"

    def get(self, prompt: Prompt, sample: int) -> dict[str, Any] | None:
        return self.entries.get(self.key(prompt, sample))

    def put_many(self, new: dict[str, dict[str, Any]]) -> None:
        """Merge ``new`` into the file (and into memory)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_suffix(".lock")):  # processes sharing one cache merge, never clobber
            merged = self._read()
            merged.update(new)
            atomic_write_json(self.path, {"group": self.group, "entries": merged})
        self.entries = merged


def cache_group(loaded: Any, sampling: SamplingConfig, seed: int, stop: list[str] | None = None) -> dict[str, Any]:
    """Everything besides the prompt that decides an answer; the sampling's name is only a label."""

    if is_greedy(sampling):
        decoding: dict[str, Any] = {"do_sample": False}
        seed_part: int | None = None  # greedy answers do not depend on the seed: share them
    else:
        decoding = {
            "do_sample": True,
            "temperature": sampling.temperature,
            "min_p": sampling.min_p,
            "top_p": sampling.top_p,
        }
        seed_part = seed
    group = {
        "model": loaded.identity(),
        # 4-bit weights answer differently from the same checkpoint in bf16; identity() records no quantization
        "quantized": bool(
            getattr(loaded.model, "is_loaded_in_4bit", False) or getattr(loaded.model, "is_loaded_in_8bit", False)
        ),
        "versions": {name: package_version(name) for name in ("torch", "transformers", "peft")},
        "chat_template_sha": template_sha(loaded.tokenizer),
        "stop_tokens": stop_token_ids(loaded),
        "decoding": decoding,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": seed_part,
    }
    return group | {"stop": list(stop)} if stop else group  # without stop strings: the keys answers were stored under
