"""A run folder's stages: what each finished stage was computed from and wrote (stages.json), and how long each
took (timings.json). ``pipeline.run`` and `tunebench eval RUN` skip a stage whose inputs and outputs are unchanged:
both compute its inputs' fingerprint here (``Fingerprints``)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core.config import RunConfig, to_dict
from tunebench.core.errors import RunFileError
from tunebench.core.io import atomic_write_json, check_json, fingerprint, read_json, sha256_file
from tunebench.evals.results import Results

log = logging.getLogger("tunebench.app.pipeline")  # the messages read as the pipeline's, as before


def train_settings(cfg: RunConfig) -> dict[str, Any]:
    """The train section as the train stage's fingerprint reads it: trackers watch training, they don't change the
    adapter, so turning one on does not train again."""
    return {k: v for k, v in to_dict(cfg.train).items() if k != "report_to"}


@dataclass(frozen=True)
class Fingerprints:
    """The inputs of a run's data, train and evaluation stages, as recorded in stages.json."""

    data: str
    train: str
    eval: str
    """Base evaluation and contamination: the data, the model and every evaluation setting but the judge's."""

    @classmethod
    def of(cls, cfg: RunConfig, source_identity: Any) -> Fingerprints:
        """The fingerprints of ``cfg`` (template resolved) on the model whose ``ModelSource.identity`` is given."""
        data = fingerprint([to_dict(cfg.data), cfg.model.chat_template, source_identity])
        train = fingerprint([data, to_dict(cfg.model), to_dict(cfg.lora), train_settings(cfg)])
        # the judge has its own stage: its settings leave perplexity, probes and lm-eval alone
        eval_settings = {k: v for k, v in to_dict(cfg.eval).items() if k != "judge"}
        return cls(data, train, fingerprint([data, to_dict(cfg.model), eval_settings, cfg.report.alpha]))

    def tuned(self, manifest: dict[str, Any]) -> str:
        """The tuned evaluation's: the base's, the training's, and which adapter it wrote (its manifest)."""
        return fingerprint([self.eval, self.train, manifest.get("created")])


class Stages:
    """stages.json: stage name -> the fingerprint of the inputs it was completed with and the SHA-256 of each output
    it wrote; timings.json: how long each took.

    A stage is fresh only when its inputs are the same, every output is there, and every output still has the bytes
    it was recorded with: a results file cut short, or replaced by another run's, is never read as this stage's.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / "stages.json"
        fix = f"delete {self.path} to re-run every stage (finished training resumes from its checkpoints)"
        recorded = (
            check_json(read_json(self.path, fix), dict[str, str | dict[str, Any]], str(self.path), fix)
            if self.path.exists()
            else {}
        )
        self.done: dict[str, str] = {}
        self.sums: dict[str, dict[str, str]] = {}
        for name, rec in recorded.items():  # a plain string: a run folder from before outputs were checksummed
            entry = rec if isinstance(rec, dict) else {"fingerprint": rec}
            if not isinstance(entry.get("fingerprint"), str) or not isinstance(entry.get("sha256", {}), dict):
                raise RunFileError(f"{self.path}: stage {name!r} is not a fingerprint and its outputs' sha256; {fix}")
            self.done[name], self.sums[name] = entry["fingerprint"], dict(entry.get("sha256", {}))
        self.clock = StageClock(run_dir)

    def _rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.run_dir))
        except ValueError:
            return str(p)

    def fresh(self, name: str, fp: str, *outputs: Path) -> bool:
        """Same inputs as last time, every output present with the bytes recorded for it; a results output must
        also read back, so a damaged one stops the run here (exit 2, naming the file and the field) instead of after
        the stages that follow."""
        if self.done.get(name) != fp or not all(p.exists() for p in outputs):
            return False
        sums = self.sums.get(name, {})
        for p in outputs:
            want = sums.get(self._rel(p))
            if want is not None and sha256_file(p) != want:
                log.warning(
                    "%s is not the file stage %s wrote (cut short, or replaced by another one): the stage runs again",
                    p,
                    name.replace("_", " "),
                )
                return False
        for p in outputs:
            if p.name == "results.json":
                Results.load(p)
        return True

    def mark(self, name: str, fp: str, outputs: list[Path] | tuple[Path, ...] = ()) -> None:
        self.done[name] = fp
        self.sums[name] = {self._rel(p): sha256_file(p) for p in outputs if p.is_file()}
        atomic_write_json(
            self.path, {n: {"fingerprint": f, "sha256": self.sums.get(n, {})} for n, f in self.done.items()}
        )

    def run(self, name: str, fp: str, outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run ``fn`` unless stage ``name`` is fresh (same inputs, outputs present and unchanged); time it, then mark
        it done with its outputs' checksums.

        Returns:
            Whether the stage ran.
        """
        if self.fresh(name, fp, *outputs):
            return False
        log.info("stage %s", name.replace("_", " "))
        with self.clock.stage(name):
            fn()
        self.mark(name, fp, outputs)
        return True


class StageClock:
    """timings.json: each stage's wall time in seconds, written as soon as the stage ends, so a report (and a
    user) sees where a run's time went; a stage skipped as fresh keeps the time of the run that did it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "timings.json"
        fix = f"delete {self.path} (it only records how long each stage took)"
        old = (
            check_json(read_json(self.path, fix), dict[str, dict[str, float] | float], str(self.path), fix)
            if self.path.exists()
            else {}
        )
        self.stages: dict[str, Any] = old.get("stages", {})

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - t, 2)
        atomic_write_json(self.path, {"stages": self.stages, "total_s": round(sum(self.stages.values()), 2)})
