"""``eval_settings``: a run's config as evaluation reads it, built once per command and passed down (``evals`` never
sees the whole ``RunConfig``)."""

from __future__ import annotations

from tunebench.core.config_schema import RunConfig
from tunebench.evals.settings import EvalSettings


def eval_settings(cfg: RunConfig) -> EvalSettings:
    """What evaluating ``cfg``'s models reads: its model and eval sections, the report's alpha, how the test split
    is encoded (``model.load_in_4bit`` as resolved for this machine, see ``evals.settings.in_4bit``)."""
    return EvalSettings(
        model=cfg.model,
        eval=cfg.eval,
        alpha=cfg.report.alpha,
        max_length=cfg.data.max_length,
        truncation=cfg.data.truncation,
    )
