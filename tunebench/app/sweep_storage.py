"""Where a sweep's study lives (``--storage``), and the lock its workers take turns under.

    sqlite:///PATH                      one machine (the default: OUT/study.db)
    postgresql://USER:PASS@HOST/DB      a database server every machine reaches (driver: psycopg[binary]);
    mysql://...                         also any other SQLAlchemy URL Optuna's RDBStorage opens (PyMySQL)
    journal:PATH                        Optuna's JournalStorage: an append-only file on a disk every machine
                                        mounts (NFS v3 or later), for sites without a database server

Workers take turns (``study_lock``) only for the moments that must not interleave: creating the study's tables and
the study, and claiming the next trial (counting, failing lost trials, asking). PostgreSQL orders them with an
advisory lock, SQLite with a lock file beside the database, a journal with an O_EXCL lock file beside it (what
Optuna's own journal lock does on NFS). Other servers (MySQL) take no lock: workers asking at the same moment may
overshoot ``--trials`` by one each.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from tunebench.core.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL = "journal:"
"""The URL scheme of a journal file: ``journal:PATH`` (``journal:///abs/path`` also reads as ``/abs/path``)."""
LOCK_TIMEOUT_S = 60
"""A PostgreSQL session that holds the lock this long idle (its worker gone mid-claim) is ended by the server."""
_ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"tunebench sweep study lock").digest()[:8], "big", signed=True)


def journal_path(url: str) -> Path | None:
    """The journal file a ``journal:`` URL names, else None."""
    if not url.startswith(JOURNAL):
        return None
    rest = url[len(JOURNAL) :]
    return Path(rest[2:] if rest.startswith("//") else rest)


def normalize_url(url: str) -> str:
    """The storage URL every process of the sweep uses: a journal's path made absolute (the trial's child reads it
    from another working directory).

    Raises:
        ConfigError: a journal URL without a path, or whose folder does not exist.
    """
    path = journal_path(url)
    if path is None:
        return url
    if not str(path) or str(path) == ".":
        raise ConfigError(f"--storage {url}: give the journal file, e.g. journal:/shared/sweeps/study.journal")
    path = path.expanduser().resolve()
    if not path.parent.is_dir():
        raise ConfigError(
            f"--storage {url}: folder {path.parent} does not exist; create it on the disk every worker mounts, "
            "or give another path"
        )
    if path.is_dir():
        raise ConfigError(f"--storage {url}: {path} is a folder; name the journal file inside it")
    return JOURNAL + str(path)


def open_storage(url: str) -> Any:
    """Optuna's storage for ``url``: a JournalStorage for ``journal:PATH``, else an RDBStorage.

    Raises whatever Optuna and SQLAlchemy raise for a storage that cannot be opened (the caller names it).
    """
    import optuna  # optional: the sweep extra

    path = journal_path(url)
    if path is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage  # optional: the sweep extra

        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLite waits for a writer instead of failing at once: several processes share one study file."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def shown_url(url: str) -> str:
    """A storage URL with its password hidden."""
    if url.startswith(JOURNAL):
        return url
    try:
        from sqlalchemy.engine import make_url  # optional: comes with optuna

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: keep what follows the credentials
        return url.split("@")[-1] if "@" in url else url


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Hold the lock every worker of the storage takes turns under (see the module docstring)."""
    journal = journal_path(url)
    if journal is not None:
        yield from _journal_lock(journal)
    elif url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).parent.is_dir():
        with FileLock(url.removeprefix("sqlite:///") + ".lock"):
            yield
    elif url.startswith(("postgresql:", "postgresql+", "postgres:")):
        yield from _advisory_lock(url)
    else:
        yield


def _journal_lock(journal: Path) -> Iterator[None]:
    """An O_EXCL lock file beside the journal, broken by the next worker after 30 s unchanged (its holder died)."""
    from optuna.storages.journal import JournalFileOpenLock  # optional: the sweep extra

    lock = JournalFileOpenLock(str(journal) + ".tunebench")  # the file is <journal>.tunebench.lock
    lock.acquire()
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # held past the grace period and broken by another worker
            lock.release()


def _advisory_lock(url: str) -> Iterator[None]:
    """A transaction-scoped advisory lock on its own connection: released at the transaction's end, or by the server
    when the worker's session sits idle in it for LOCK_TIMEOUT_S (the worker's machine was lost mid-claim)."""
    import sqlalchemy  # optional: comes with optuna
    from sqlalchemy.pool import NullPool  # optional: comes with optuna

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"SET LOCAL idle_in_transaction_session_timeout = '{LOCK_TIMEOUT_S}s'"))
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
            try:
                yield
            finally:
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # the server ended it: released already
                    conn.rollback()
    finally:
        engine.dispose()
