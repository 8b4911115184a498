"""A run folder's stages: what each finished stage was computed from and wrote (stages.json), and how long each
took (timings.json). ``pipeline.run`` skips a stage whose inputs and outputs are unchanged."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
        self.ran_at: dict[str, str] = {}
        """When each stage last ran (UTC, ISO 8601); absent in run folders from before it was recorded."""
        self.reused: list[str] = []
        """Stages this process found fresh and skipped, in order."""
        for name, rec in recorded.items():  # a plain string: a run folder from before outputs were checksummed
            entry = rec if isinstance(rec, dict) else {"fingerprint": rec}
            if not isinstance(entry.get("fingerprint"), str) or not isinstance(entry.get("sha256", {}), dict):
                raise RunFileError(f"{self.path}: stage {name!r} is not a fingerprint and its outputs' sha256; {fix}")
            self.done[name], self.sums[name] = entry["fingerprint"], dict(entry.get("sha256", {}))
            if isinstance(entry.get("ran_at"), str):
                self.ran_at[name] = entry["ran_at"]
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
        """Record stage ``name`` as done now, with its inputs' fingerprint and its outputs' checksums."""
        self.done[name] = fp
        self.sums[name] = {self._rel(p): sha256_file(p) for p in outputs if p.is_file()}
        self.ran_at[name] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {}
        for n, f in self.done.items():
            record[n] = {"fingerprint": f, "sha256": self.sums.get(n, {})}
            if n in self.ran_at:
                record[n]["ran_at"] = self.ran_at[n]
        atomic_write_json(self.path, record)

    def run(self, name: str, fp: str, outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run ``fn`` unless stage ``name`` is fresh (same inputs, outputs present and unchanged); time it, then mark
        it done with its outputs' checksums.

        Returns:
            Whether the stage ran.
        """
        if self.fresh(name, fp, *outputs):
            self.reused.append(name)
            return False
        log.info("stage %s", name.replace("_", " "))
        with self.clock.stage(name):
            fn()
        self.mark(name, fp, outputs)
        return True

    def reuse_line(self) -> str | None:
        """One line naming the stages this process reused (inputs and outputs unchanged), or None."""
        if not self.reused:
            return None
        names = ", ".join(n.replace("_", " ") for n in self.reused)
        return f"reused (inputs unchanged; when each ran: {self._rel(self.path)}): {names}"


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
