"""What a command shows on the terminal, and what goes to the run's log file instead.

Quiet by default: the terminal gets tunebench's own log lines, any library's errors, and one progress bar per stage
(``stage``; the loops inside a stage advance its bar through ``bar``). Library log lines and warnings (transformers,
lm-eval, torch, datasets, optuna, Python's ``warnings``) go to the run's ``run.log`` once a command knows its run
folder (``log_to``; what came before is kept until then), and the libraries' own progress bars are off. ``-v``
(``setup(verbose=True)``) shows everything as the libraries print it, and every loop its own bar.

Child processes (training, lm-eval, sweep trials) inherit the choice, the log file and whether their parent shows the
bar through the environment (``VERBOSE_ENV``, ``RUN_LOG_ENV``, ``BARS_ENV``).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

VERBOSE_ENV = "TUNEBENCH_VERBOSE"
"""``1``: everything on the terminal (``-v``), in this process and its children."""
RUN_LOG_ENV = "TUNEBENCH_RUN_LOG"
"""The run's log file, which a child appends to."""
BARS_ENV = "TUNEBENCH_BARS"
"""``off`` in a child whose parent shows the bar (a sweep's trials, under the sweep's bar over trials)."""
LIBRARY_BARS_OFF = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
"""The libraries' own bars off: each library reads these when it is imported (children; later imports here)."""
OWN_HANDLERS = ("transformers.utils.logging", "optuna.logging", "torch")
"""Modules of libraries that print through terminal handlers of their own, not the root logger's: the handlers are
taken off when the module has been imported, so their records reach the run's log instead."""
OURS = ("tunebench", "__main__")  # a tunebench module run with -m logs as __main__
FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
NOISY = ("httpx", "urllib3", "filelock", "matplotlib", "datasets", "huggingface_hub")
"""Chatty at INFO even in a verbose run: their warnings still count."""


def _tqdm() -> Any:
    """tqdm's class, imported on first use: ``setup`` sets TQDM_DISABLE first, and tqdm reads it on import."""
    from tqdm.auto import tqdm

    return tqdm


_state: dict[str, Any] = {"file": None, "buffer": None, "terminal": None, "stages": [], "hook": None}


def is_verbose() -> bool:
    """Whether this process shows everything (``-v`` here, or in the parent that started it)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def setup(verbose: bool = False) -> None:
    """Configure this process's terminal and logs, once per command (again replaces the earlier setup).

    A process whose logging someone else configured first (a test runner, an application embedding tunebench) keeps
    its handlers: nothing is added to the terminal, and library records keep their way.
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    verbose = is_verbose()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = logging.getLogger()
    if _state["terminal"] is not None:
        root.removeHandler(_state["terminal"])
    elif root.handlers:  # configured by someone else: as logging.basicConfig would, leave it alone
        return
    terminal = TerminalHandler()
    terminal.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(terminal)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    _state["terminal"] = terminal
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # optional native kernels that a CPU install lacks by design: their load failures are not the user's problem
    for noisy in ("torchao", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if verbose:
        return
    terminal.addFilter(ours_or_error)
    for key, value in LIBRARY_BARS_OFF.items():
        os.environ.setdefault(key, value)
    logging.captureWarnings(True)  # Python warnings as records of "py.warnings": to the run's log
    if _state["buffer"] is None:  # what libraries say before the run folder is known, written to its log then
        _state["buffer"] = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        _state["buffer"].addFilter(not_ours)
        root.addHandler(_state["buffer"])
    _take_own_handlers()
    if os.environ.get(RUN_LOG_ENV):
        log_to(os.environ[RUN_LOG_ENV])


def reset() -> None:
    """Undo ``setup`` and ``log_to`` (the end of a command run in process: the next starts clean)."""
    root = logging.getLogger()
    for key in ("terminal", "file", "buffer"):
        handler = _state[key]
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
            _state[key] = None
    os.environ.pop(RUN_LOG_ENV, None)
    os.environ.pop(VERBOSE_ENV, None)
    logging.captureWarnings(False)


def log_to(path: str | Path) -> Path:
    """Append this process's log records (everything: ours and the libraries') to ``path`` (the run's run.log) from
    now on, with what the libraries said before; children append to the same file.

    Returns:
        The log file's path.
    """
    path = Path(path).resolve()
    root = logging.getLogger()
    old = _state["file"]
    if old is not None and Path(old.baseFilename) == path:
        return path
    if old is not None:
        root.removeHandler(old)
        old.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # no file until there is a line for it
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.DEBUG if is_verbose() else logging.INFO)
    buffer = _state["buffer"]
    if buffer is not None:  # the libraries' records from before the folder was known
        buffer.setTarget(handler)
        buffer.flush()
        buffer.setTarget(None)
        root.removeHandler(buffer)
        _state["buffer"] = None
    root.addHandler(handler)
    _state["file"] = handler
    os.environ[RUN_LOG_ENV] = str(path)
    return path


def ours_or_error(record: logging.LogRecord) -> bool:
    """The terminal's filter when quiet: tunebench's own records, and any library's errors."""
    return record.name.split(".", 1)[0] in OURS or record.levelno >= logging.ERROR


def not_ours(record: logging.LogRecord) -> bool:
    """Records of the libraries (the terminal shows ours as they come)."""
    return record.name.split(".", 1)[0] not in OURS


class TerminalHandler(logging.StreamHandler):
    """The terminal's log lines on stderr, written between the redraws of the stage's bar (not through it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        """Write one formatted record above the bar."""
        try:
            with _tqdm().external_write_mode(file=sys.stderr):
                sys.stderr.write(self.format(record) + "\n")
                sys.stderr.flush()
        except Exception:
            self.handleError(record)


class LogLines(io.TextIOBase):
    """A text stream whose lines become log records of ``logger`` (a library's prints, as records of its name)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.pending = logger, ""

    def writable(self) -> bool:
        """A stream one writes to."""
        return True

    def write(self, text: str) -> int:
        """Log each complete line; keep the rest for the next write."""
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line.rstrip())
        return len(text)

    def flush(self) -> None:
        """Log what is left of a last line."""
        if self.pending.strip():
            self.logger.info(self.pending.rstrip())
        self.pending = ""


@contextlib.contextmanager
def prints_to_log(name: str) -> Iterator[None]:
    """What a library prints to stdout meanwhile, as log records of ``name`` (the run's log), unless verbose."""
    if is_verbose():
        yield
        return
    lines = LogLines(logging.getLogger(name))
    try:
        with contextlib.redirect_stdout(lines):
            yield
    finally:
        lines.flush()


def echo(text: str) -> None:
    """Write a child process's output to stderr between the redraws of the stage's bar."""
    with _tqdm().external_write_mode(file=sys.stderr):
        sys.stderr.write(text)
        sys.stderr.flush()


# ----------------------------------------------------------------------------- libraries with their own handler


def _take_own_handlers() -> None:
    """Route the ``OWN_HANDLERS`` libraries' records through the root logger: now for those imported already, at
    import for the others (an import hook, removed once every one is done)."""
    for module in OWN_HANDLERS:
        if module in sys.modules:
            _adopt(sys.modules[module])
    pending = {m for m in OWN_HANDLERS if m not in sys.modules}
    hook = _state["hook"]
    if hook is not None and hook in sys.meta_path:
        sys.meta_path.remove(hook)
    if pending:
        _state["hook"] = AfterImport(pending, _adopt)
        sys.meta_path.insert(0, _state["hook"])


def _adopt(module: ModuleType) -> None:
    """Take a library's terminal handlers off and let its records propagate: through its own switches where it has
    them (transformers and optuna add their handler on first use), else by taking the plain stream handlers off its
    loggers (torch adds one to each of its registered loggers on import)."""
    if hasattr(module, "disable_default_handler"):
        module.disable_default_handler()
        module.enable_propagation()
    else:
        prefix = module.__name__
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and (name == prefix or name.startswith(prefix + ".")):
                for handler in list(logger.handlers):
                    if type(handler) is logging.StreamHandler:  # not a file the user asked for
                        logger.removeHandler(handler)
                logger.propagate = True
    if module.__name__ == "transformers.utils.logging":
        module.disable_progress_bar()  # its weight-loading bars: read from a flag it set on import


class AfterImport(importlib.abc.MetaPathFinder):
    """An import hook that calls ``then(module)`` right after each of ``modules`` is first executed."""

    def __init__(self, modules: set[str], then: Callable[[ModuleType], None]) -> None:
        self.modules, self.then = modules, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        """The spec the path finder gives, its loader wrapped to call ``then`` after executing the module."""
        if fullname not in self.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        self.modules.discard(fullname)
        spec.loader = ThenLoader(spec.loader, self.then)
        return spec


class ThenLoader(importlib.abc.Loader):
    """A module loader that calls ``then(module)`` once the wrapped loader has executed the module."""

    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec: Any) -> Any:
        """The wrapped loader's module."""
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Execute the module, then call ``then`` on it."""
        self.loader.exec_module(module)
        self.then(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_data, is_package...: the wrapped loader's
        return getattr(self.loader, name)


# ----------------------------------------------------------------------------- one bar per stage


class Stage:
    """One stage's bar. With a ``total`` (training's steps, a sweep's trials) it counts those, and the loops inside
    show nothing; without one it appears with the first loop inside (``bar``) and counts every loop's items, the
    current loop's name as its postfix."""

    def __init__(self, name: str, total: int | None, initial: int, unit: str, shown: bool) -> None:
        self.name, self.counted, self.unit, self.shown = name, total is not None, unit, shown
        self.bar: Any = None
        if self.counted:
            self._open(total, initial)

    def _open(self, total: int | None, initial: int = 0) -> None:
        self.bar = _tqdm()(
            total=total,
            initial=initial,
            desc=self.name,
            unit=self.unit,
            dynamic_ncols=True,
            mininterval=0.5,
            disable=not self.shown,  # given, so that TQDM_DISABLE (the libraries' bars off) leaves it on
            file=sys.stderr,
            # the loops of a stage count different things (tokens, prompts, requests) and start one after the other:
            # a share done and the time taken, no count, rate or ETA
            **({} if self.counted else {"bar_format": "{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}"}),
        )

    def grow(self, total: int, part: str | None) -> None:
        """A loop of ``total`` items inside the stage has started."""
        if self.bar is None:
            self._open(total)
        else:
            self.bar.total = (self.bar.total or 0) + total
        if part:
            self.bar.set_postfix_str(part, refresh=True)

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        if self.bar is not None:
            self.bar.update(n)

    def count(self, n: int) -> None:
        """``n`` items done in all (a sweep's finished trials, other workers' included)."""
        if self.bar is not None and n != self.bar.n:
            self.bar.update(n - self.bar.n)

    def shrink(self, n: int) -> None:
        """A loop inside ended ``n`` items short of what it announced."""
        if self.bar is not None and n:
            self.bar.total = max(self.bar.n, (self.bar.total or 0) - n)
            self.bar.refresh()

    def set_postfix(self, values: dict[str, Any]) -> None:
        """Figures shown after the bar (loss, tokens/s)."""
        if self.bar is not None:
            self.bar.set_postfix(values)

    def close(self) -> None:
        """End the bar (its last state stays on the terminal) and the stage."""
        if self.bar is not None:
            self.bar.close()
        if self in _state["stages"]:
            _state["stages"].remove(self)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stage(name: str, total: int | None = None, initial: int = 0, unit: str = "it", show: bool = True) -> Stage:
    """Open the bar of a stage (close it, or use it as a context manager). Inside another stage, a stage shows
    nothing: the outer bar counts; nor does it with ``show`` false (a data-parallel worker other than the first)."""
    shown = show and os.environ.get(BARS_ENV) != "off" and not _state["stages"]
    st = Stage(name, total, initial, unit, shown)
    _state["stages"].append(st)
    return st


class Part:
    """A loop inside a stage, as the loop sees it (tqdm's ``update``, ``close``, ``set_postfix``, iteration): its
    items advance the stage's bar, which shows the loop's name."""

    def __init__(self, owner: Stage | None, iterable: Iterable[Any] | None, total: int | None, desc: str | None):
        self.owner, self.iterable, self.n = owner, iterable, 0
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total or 0
        self.closed = False
        if owner is not None:
            owner.grow(self.total, desc)

    def update(self, n: int = 1) -> None:
        """``n`` more items of the loop done."""
        self.n += n
        if self.owner is not None:
            self.owner.update(n)

    def close(self) -> None:
        """The loop ended (items it announced and did not do no longer count)."""
        if not self.closed and self.owner is not None:
            self.owner.shrink(max(0, self.total - self.n))
        self.closed = True

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Ignored: the stage's bar shows the stage's figures."""

    set_postfix_str = set_description = refresh = set_postfix

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> Part:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str | None = None, **kwargs: Any) -> Any:
    """A loop's progress, as ``tqdm(iterable, total=..., desc=..., disable=..., ...)`` takes it: its own bar when
    verbose; else a part of the current stage's bar (nothing when no stage is open, or the stage counts its own
    units, or ``disable`` is true)."""
    if is_verbose():
        return _tqdm()(iterable, total=total, desc=desc, **kwargs)
    current = _state["stages"][-1] if _state["stages"] else None
    owner = current if current is not None and not current.counted and not kwargs.get("disable") else None
    return Part(owner, iterable, total, desc)
