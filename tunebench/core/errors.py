"""One error hierarchy. Each class carries the exit code the command line returns for it, so the CLI maps
errors by class (never by name): invalid input 2, interrupted 130. A gate verdict is not an error: the gate
returns 1 (a rule failed) or 3 (could not conclude) as its result (EXIT_GATE_FAILED, EXIT_GATE_INCONCLUSIVE).

Every stage raises these with a message that says what was wrong, where, and what to do; the CLI prints
that one paragraph without a traceback (``-v`` adds it).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from jinja2.exceptions import SecurityError

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_GATE_INCONCLUSIVE = 3
"""No rule failed, but at least one interval straddles its margin: not enough evidence to ship."""
EXIT_INTERRUPTED = 130


class TunebenchError(Exception):
    """Base of every error tunebench raises on purpose; ``exit_code`` is what the command returns."""

    exit_code = EXIT_INVALID_INPUT


class InvalidInput(TunebenchError):
    """Input that cannot be used (config, data, model, adapter, rules, run folder): exit code 2."""

    exit_code = EXIT_INVALID_INPUT


class Interrupted(TunebenchError):
    """Stopped by the user (Ctrl-C, SIGTERM) after saving what can be resumed: exit code 130."""

    exit_code = EXIT_INTERRUPTED


class ConfigError(InvalidInput, ValueError):
    """A preset, override or value that cannot be used; the message says what to do."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key
        """The dotted config key at fault, when one is (so the message can say where it was set)."""


class DataError(InvalidInput):
    """Input data that cannot be used; the message says what, where and what to do."""


class TemplateError(DataError):
    """The chat template does not reproduce message contents verbatim, or its end-of-turn marker cannot be trained
    whole, so no mask can be derived."""


class ModelError(InvalidInput):
    """A model reference that cannot be resolved or loaded; the message says what to do."""


class AdapterError(ModelError):
    """An adapter folder that is missing, damaged, or made for another base model."""


class BackendError(InvalidInput):
    """A training backend that cannot run here, with the reason."""


class TrainingError(InvalidInput):
    """Training stopped for a reason the user must act on (NaN loss, existing run folder, ...)."""


class RunExistsError(TrainingError):
    """The run folder already holds training output; resume or overwrite explicitly."""


class ProbeError(InvalidInput, ValueError):
    """A probe file that cannot be used; the message names the file, the line and the fix."""


class ProbeSecurityError(ProbeError, SecurityError):
    """A probe template tried to leave the sandbox (attribute access to internals, unsafe calls)."""


class LmEvalError(InvalidInput):
    """lm-eval could not run: unknown task, unreachable task data, failed child process. The message says why."""


class ComparisonError(InvalidInput, ValueError):
    """Base and tuned results that cannot be compared (different inputs, models or items)."""


class GateError(InvalidInput, ValueError):
    """Rules or inputs the gate cannot judge (exit code 2); the message says where and what to do."""


class RunFileError(InvalidInput, ValueError):
    """A file of a run folder (results, comparison, stages, reports) that is damaged, of another version or of the
    wrong shape; the message names the file, the field and the command that writes it again."""


class MissingRunFile(RunFileError, FileNotFoundError):
    """A file or folder a command needs that is not there; the message says which step writes it."""


class RunLocked(InvalidInput):
    """Another live process is writing the run folder (its pid, host, command and start are named): exit code 2."""


class DiskFull(InvalidInput, OSError):
    """A write that ran out of space (ENOSPC): the message names the path, the space it needed and what is free;
    the file that was there before is left as it was (exit code 2)."""


class PipelineError(InvalidInput):
    """A run folder or stage problem the user must resolve."""


class JudgeError(InvalidInput, ValueError):
    """Judge stage: unknown prompt set, bad judge template, unreachable endpoint, missing MT-Bench data."""


class EndpointError(InvalidInput, ValueError):
    """`eval --endpoint`: a server that cannot be reached, is not OpenAI-compatible, or failed a request (named)."""


class ExportError(InvalidInput):
    """An export that cannot be written (no adapter, unsupported architecture or quantization, disk full)."""


class BenchmarkError(InvalidInput, ValueError):
    """A benchmark shape, tokenizer source or setup that cannot be used; the message says what to do."""


def did_you_mean(
    word: str, choices: Iterable[str], prefix: str = " Did you mean ", suffix: str = "?", n: int = 1
) -> str:
    """The closest of ``choices`` to ``word`` as a sentence fragment, or "" when none is close.

    Args:
        word: what the user wrote.
        choices: the known names.
        prefix: text before the quoted suggestion(s).
        suffix: text after them.
        n: how many suggestions at most (joined with "or").

    Returns:
        e.g. ``" Did you mean 'unsloth'?"``, or an empty string.
    """
    word = str(word)
    if len(word) > 200:  # no name is this long, and difflib's time grows with it
        return ""
    hints = difflib.get_close_matches(word, [str(c) for c in choices], n=n)
    return f"{prefix}{' or '.join(repr(h) for h in hints)}{suffix}" if hints else ""


def closest(word: str, choices: Iterable[str], first: Iterable[str] = ()) -> str | None:
    """The choice closest to ``word`` (difflib's ratio, at least 0.6, as ``did_you_mean``), or None.

    Args:
        word: what the user wrote.
        choices: the known names.
        first: names that win a tie (the practitioner's names before the fields that look alike).

    Returns:
        the closest choice, or None when none is close.
    """
    preferred = set(first)
    scored = []
    for c in dict.fromkeys(choices):
        ratio = difflib.SequenceMatcher(None, word, c).ratio()
        if ratio >= 0.6:
            scored.append((ratio, c in preferred, c))
    return max(scored)[2] if scored else None


class ShardError(InvalidInput):
    """`tunebench merge`: shards missing, duplicated, of another split or evaluated on other settings (named, with
    the command that writes the right one); nothing is written."""
