"""The light side of lm-eval's HF model: the class lm-eval runs (``model_class()``, imported from ``hf``
when asked, since that module imports lm-eval, transformers and torch at its top), how it ran (``describe``), and
lm-eval's task templates compiled once (``cache_task_templates``). What the model changes and why: ``hf``.
"""

from __future__ import annotations

import functools
from typing import Any

RUNNER = "lm-eval hf"


@functools.lru_cache(maxsize=4096)
def _compiled_template(template: str) -> Any:
    from lm_eval import utils  # heavy: lm-eval

    return utils.env.from_string(template)


def _apply_template(template: str, doc: dict[str, Any]) -> str:
    """``lm_eval.utils.apply_template`` with each template compiled once: the same environment, template and render."""
    return _compiled_template(template).render(**doc)


def cache_task_templates() -> None:
    """Make lm-eval compile each task's Jinja template once instead of once per document.

    lm-eval renders ``doc_to_text``/``doc_to_target``/``doc_to_choice`` through ``utils.apply_template``, which
    calls ``Environment.from_string`` every time, most of lm-eval's time outside the model on the standard tasks
    (docs/evaluation.md, "How lm-eval runs"). Idempotent.
    """
    from lm_eval import utils  # heavy: lm-eval

    utils.apply_template = _apply_template


def model_class() -> type:
    """lm-eval's HF model as the suite runs it (``hf.TunebenchLM``); importing it imports lm-eval."""
    from tunebench.evals.lm_eval.hf import TunebenchLM  # heavy: lm-eval, transformers, torch

    return TunebenchLM


def describe(lm: Any) -> str:
    """How generate_until ran, for the results' model identity."""
    cache = {
        "graph": "static cache, CUDA graph decode loop",
        "static": "static cache, compiled",
        "dynamic": "dynamic cache",
    }[lm.decode_loop]
    return f"{RUNNER} (generate_until: {cache}, batch {lm.generate_batch_size}, per-row stop strings)"
