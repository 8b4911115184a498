"""A run folder's stages: what each finished stage was computed from and wrote (stages.json), and how long each
took (timings.json). ``pipeline.run`` and `tunebench eval RUN` skip a stage whose inputs and outputs are unchanged:
both compute its inputs' fingerprint here (``Fingerprints``)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core import output
from tunebench.core.config import read_run_config
from tunebench.core.config_build import to_dict
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import PipelineError, RunFileError
from tunebench.core.io import (
    atomic_write_json,
    check_json,
    fingerprint,
    folder_problem,
    read_json,
    read_yaml,
    sha256_file,
)
from tunebench.data.conversations import load_split
from tunebench.data.standardize import SPLITS
from tunebench.evals.results import Results

log = logging.getLogger("tunebench.app.pipeline")  # the messages read as the pipeline's, as before
CONFIG_RECORD = "_config"
"""stages.json's entry for the settings of config.yaml when a stage was last marked done (not a stage)."""


def train_settings(cfg: RunConfig) -> dict[str, Any]:
    """The train section as the train stage's fingerprint reads it: trackers watch training, they don't change the
    adapter, so turning one on does not train again; a setting added since (warmup_ratio) left unset leaves the
    fingerprint of a run folder written before it as it was."""
    return {k: v for k, v in to_dict(cfg.train).items() if k != "report_to" and not (k == "warmup_ratio" and v is None)}


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
        config = recorded.pop(CONFIG_RECORD, {})
        self.config: str | None = config.get("settings") if isinstance(config, dict) else None
        """The fingerprint of config.yaml's settings when a stage was last marked done (None before it was kept)."""
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
            elif p.suffix == ".jsonl" and self._rel(p) not in sums:  # a folder from before splits were checksummed
                load_split(p.parent, p.stem)
        return True

    def mark(self, name: str, fp: str, outputs: list[Path] | tuple[Path, ...] = ()) -> None:
        """Record stage ``name`` as done now, with its inputs' fingerprint and its outputs' checksums."""
        self.done[name] = fp
        self.sums[name] = {self._rel(p): sha256_file(p) for p in outputs if p.is_file()}
        self.ran_at[name] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.config = settings_fingerprint(self.run_dir)
        record: dict[str, Any] = {CONFIG_RECORD: {"settings": self.config}}
        for n, f in self.done.items():
            record[n] = {"fingerprint": f, "sha256": self.sums.get(n, {})}
            if n in self.ran_at:
                record[n]["ran_at"] = self.ran_at[n]
        atomic_write_json(self.path, record)

    def run(self, name: str, fp: str, outputs: list[Path], fn: Callable[[], Any], bar: bool = True) -> bool:
        """Run ``fn`` unless stage ``name`` is fresh (same inputs, outputs present and unchanged); time it, then mark
        it done with its outputs' checksums.

        Args:
            bar: Show the stage's bar (a sweep's one bar is over its trials: its data stage shows none).

        Returns:
            Whether the stage ran.
        """
        if self.fresh(name, fp, *outputs):
            self.reused.append(name)
            return False
        log.info("stage %s", name.replace("_", " "))
        shown = output.stage(name.replace("_", " ")) if bar else contextlib.nullcontext()
        with self.clock.stage(name), shown:  # one bar: the loops inside advance it
            fn()
        self.mark(name, fp, outputs)
        return True

    def reuse_line(self) -> str | None:
        """One line naming the stages this process reused (inputs and outputs unchanged), or None."""
        if not self.reused:
            return None
        names = ", ".join(n.replace("_", " ") for n in self.reused)
        return f"reused (inputs unchanged; when each ran: {self._rel(self.path)}): {names}"


def settings_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of a run's config.yaml settings (the ``resolution`` notes left out: their wording may change
    while the values they explain stay); None without a config.yaml."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    data = read_yaml(path, f"restore {path} from a copy", RunFileError)
    return fingerprint({k: v for k, v in data.items() if k != "resolution"} if isinstance(data, dict) else data)


def run_folder(path: str | Path, wrote_it: str = "`tunebench run` or `tunebench train`") -> Path:
    """``path`` as a run folder, or PipelineError saying why it is not one (a link loop, a file, no config.yaml)."""
    path = Path(path)
    problem = folder_problem(path)
    if problem == "no such folder":
        problem = "not a tunebench run folder (no such run folder exists)"
    if problem is None and not (path / "config.yaml").is_file():
        problem = "not a tunebench run folder (no config.yaml)"
    if problem:
        raise PipelineError(f"{path}: {problem}; give the folder that {wrote_it} wrote (runs/<name>)")
    return path


def check_run_folder(run_dir: Path, splits: bool = False) -> None:
    """A run folder checked before a command uses it: its config.yaml reads and is the one its stages were computed
    with, and (``splits``) every split under data/ reads whole, as many conversations as the data report records.

    Raises:
        ConfigError: config.yaml empty or unreadable. RunFileError: stages.json damaged, or a damaged split (file and
            line). PipelineError: config.yaml changed since the stages ran.
    """
    read_run_config(run_dir)
    recorded = Stages(run_dir).config if (run_dir / "stages.json").exists() else None
    if recorded is not None and recorded != settings_fingerprint(run_dir):
        raise PipelineError(
            f"{run_dir / 'config.yaml'} is not the config the run's stages were computed with (stages.json records "
            "other settings: it was edited or replaced since). Put the original back, or compute the stages again "
            f"on these settings with `tunebench run {run_dir / 'config.yaml'} --out {run_dir}` (only the stages "
            "whose settings changed run again)"
        )
    for split in SPLITS if splits else ():
        if (run_dir / "data" / f"{split}.jsonl").exists():
            load_split(run_dir / "data", split)


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
