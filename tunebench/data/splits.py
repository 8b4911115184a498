"""Splits too small to decide anything: said before training, with the setting to change.

A base/tuned comparison pairs the two models' scores conversation by conversation over the test split; below
``MIN_TEST_CONVERSATIONS`` its intervals are too wide for any gate margin, so the run could only end
inconclusive. ``train.eval_every`` asks for a validation loss that an empty validation split cannot give.
Both warn; ``--strict`` makes them errors (exit 2).
"""

from __future__ import annotations

import logging

from tunebench.core.config_schema import DataConfig
from tunebench.core.errors import DataError

log = logging.getLogger(__name__)

MIN_TEST_CONVERSATIONS = 30
"""Fewest test conversations a comparison can decide on (the smoke preset's 45 conclude its perplexity rule)."""


def split_problems(sizes: dict[str, int], cfg: DataConfig, eval_every: int) -> list[str]:
    """What is too small in ``sizes`` (conversations per split after the caps), each with the setting to change."""
    total = sum(sizes.values())
    out = []
    test = sizes.get("test", 0)
    if test < MIN_TEST_CONVERSATIONS:
        fix = (
            f"raise data.max_test (now {cfg.max_test})"
            if cfg.max_test is not None and test >= cfg.max_test
            else f"raise data.test_fraction (now {cfg.test_fraction:g}; about {MIN_TEST_CONVERSATIONS / total:.2g} "
            f"of these {total} conversations) or give more data"
            if total
            else "give more data"
        )
        out.append(
            f"test split: {test} conversation(s), fewer than the {MIN_TEST_CONVERSATIONS} a base/tuned "
            f"comparison needs to decide anything (docs/data.md, 'Splits'); {fix}"
        )
    if eval_every > 0 and sizes.get("validation", 0) == 0:
        out.append(
            f"validation split: empty, but train.eval_every={eval_every} asks for a validation loss; raise "
            f"data.validation_fraction (now {cfg.validation_fraction:g}) or set train.eval_every=0"
        )
    return out


def check_splits(sizes: dict[str, int], cfg: DataConfig, eval_every: int, strict: bool = False) -> list[str]:
    """Log each split problem as a warning, or refuse them all with ``strict``.

    Returns:
        The problems (for the data report's warnings).

    Raises:
        DataError: ``strict`` and a split is too small.
    """
    problems = split_problems(sizes, cfg, eval_every)
    if problems and strict:
        raise DataError(f"{cfg.source}: " + "; ".join(problems) + " (an error under --strict)")
    for p in problems:
        log.warning("%s: %s", cfg.source, p)
    return problems
