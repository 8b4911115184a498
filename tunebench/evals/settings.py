"""What evaluation reads of a run's config: ``EvalSettings``, built once by ``app`` (``app.eval_settings``).

``evals`` never sees the whole ``RunConfig``: a driver, a family or the judge gets the model to load (its
``model`` section, with the 4-bit choice already resolved by the one rule, ``in_4bit``), the ``eval`` section,
the report's alpha and how the test split is encoded. ``load_model`` is the one place the run's model (base, or
base + adapter) is loaded for evaluation from these settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core.config_schema import EvalConfig, ModelConfig


def in_4bit(load_in_4bit: str, merge_adapter: bool, artifact: bool = False) -> bool:
    """Whether evaluation loads the base in 4 bit (bitsandbytes nf4): only when ``model.load_in_4bit`` is ``on``
    (as resolved for this machine), the adapter is not merged (``eval.merge_adapter`` false: merging uses the
    original 16-bit weights, and the base is then scored in 16 bit too, so the pair differs only by the adapter)
    and the model is not an exported artifact (a GGUF is scored as written, never requantized).

    The one rule for every evaluation that loads the run's model: the suite (evals.driver), the judge's answers
    (evals.judge.stage) and a sweep's validation perplexity (evals.validation).
    """
    return not artifact and load_in_4bit == "on" and not merge_adapter


@dataclass(frozen=True)
class EvalSettings:
    """The settings of one evaluation (see the module docstring)."""

    model: ModelConfig
    """The run's model section (``ref`` is an exported GGUF for an artifact, see ``for_artifact``)."""
    eval: EvalConfig
    """The run's eval section: what is measured, with which sizes and seeds."""
    alpha: float = 0.05
    """Two-sided level of every interval (``report.alpha``)."""
    max_length: int = 2048
    """How the test split is encoded (``data.max_length``): its tokens must be the data step's."""
    truncation: str = "truncate"
    """``data.truncation``."""
    artifact: bool = False
    """``model.ref`` is an exported GGUF of the run: loaded as written (never 4-bit) after its template is checked."""

    @property
    def load_in_4bit(self) -> bool:
        """The base is loaded in 4 bit (``in_4bit``: the one rule)."""
        return in_4bit(self.model.load_in_4bit, self.eval.merge_adapter, self.artifact)

    def for_artifact(self, ref: str | Path) -> EvalSettings:
        """These settings for an exported artifact of the run at ``ref`` (scored as written)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, ref=str(ref)), artifact=True)


def probes_on(eval_cfg: EvalConfig) -> bool:
    """Whether an ``eval`` section measures probes: probe sets and sampling settings both given (the one predicate)."""
    return bool(eval_cfg.probe_files and eval_cfg.probe_sampling)


def load_model(
    settings: EvalSettings,
    adapter: str | Path | None,
    base: dict[str, Any] | None = None,
    in_4bit: bool | None = None,
    source: Any = None,
) -> Any:
    """The run's model loaded for evaluation (``evals.modeling.load_for_eval``) as ``settings`` say.

    Args:
        adapter: the adapter folder (None: the base alone).
        base: the adapter manifest's ``model`` (``ref``, ``revision``): load the base it was trained on, not
            ``settings.model.ref`` (the in-process reference an artifact or a server is compared with).
        in_4bit: override the 4-bit rule (a reference adapter is compared in 16 bit).
        source: the model already resolved (``models.loading.resolve_model``) from ``settings.model``.

    Raises:
        ModelError, AdapterError: with what to do.
    """
    from tunebench.evals.modeling import load_for_eval
    from tunebench.models.loading import resolve_model

    if source is None:
        if base is not None:
            source = resolve_model(base.get("ref") or settings.model.ref, base.get("revision"))
        else:
            source = resolve_model(settings.model.ref, settings.model.revision)
    return load_for_eval(
        source,
        adapter,
        settings.model.chat_template,
        dtype=settings.model.dtype,
        load_in_4bit=settings.load_in_4bit if in_4bit is None else in_4bit,
        trust_remote_code=settings.model.trust_remote_code,
        merge_adapter=settings.eval.merge_adapter,
    )
