"""A run folder's stages: what each finished stage was computed from and wrote (stages.json), and how long each
took (timings.json). ``pipeline.run`` skips a stage whose inputs and outputs are unchanged."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunebench.core import output
from tunebench.core.errors import RunFileError
from tunebench.core.io import atomic_write_json, check_json, read_json, sha256_file
from tunebench.evals.results import Results

log = logging.getLogger("tunebench.app.pipeline")  # the messages read as the pipeline's, as before


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
        with self.clock.stage(name), output.stage(name.replace("_", " ")):  # one bar: the loops inside advance it
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
