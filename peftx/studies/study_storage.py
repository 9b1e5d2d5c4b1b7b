"""Where a sweep's study is stored, and the pieces of Optuna's heartbeat and retry a sweep uses.

The journal file in the sweep's directory by default (no server; its workers need the file system
the file is on), or a database URL for workers on many machines.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from peftx.errors import PeftxError

JOURNAL = "optuna-journal.log"
HEARTBEAT_SECONDS = 60  # a worker whose trial has had no heartbeat for 3 of these is taken for dead
MAX_RETRIES = 3  # a point whose worker dies this often stays failed until a later `peftx sweep` starts


@contextmanager
def settled() -> Iterator[None]:
    """Optuna's heartbeat and retry have been "experimental" since Optuna 2.8: not worth a warning each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def retry_callback(max_retry: int | None = MAX_RETRIES) -> RetryHeartbeatStaleTrialCallback:
    """Queue a trial again with its values, user attributes (run directory) and reports."""
    with settled():
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)


optuna.logging.set_verbosity(optuna.logging.WARNING)


def worker_index() -> int:
    """This worker's index among a sweep's workers (`--workers` sets it; a Slurm array task's index
    otherwise): a search's sampler seed differs by it."""
    for var in ("PEFTX_SWEEP_WORKER", "SLURM_ARRAY_TASK_ID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def open_storage(url: str | None, sweep_dir: Path, heartbeat: int):
    """The storage a sweep's study lives in.

    Args:
        url: a database URL (anything with `://`), a journal file's path, or None: the journal file in
            the sweep's directory.
        heartbeat: seconds between a running trial's heartbeats; 3 missed: its worker is taken for dead.

    Raises:
        PeftxError: a database that cannot be reached or whose driver is missing (the URL's password
            is not shown).
    """
    if url and "://" in url:
        url = database_url(url)
        retry = retry_callback()
        # several workers write to one SQLite file: wait for its lock rather than fail at once
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        try:
            with settled():
                return RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=heartbeat,
                    grace_period=3 * heartbeat,
                    heartbeat_stale_trial_callback=retry,
                )
        except Exception as e:  # SQLAlchemy's errors (driver missing, refused, bad URL) in one line
            shown = url.split("@")[-1] if "@" in url else url
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PeftxError(f"--storage {shown}: cannot open the study's database ({first})") from None
    path = Path(url) if url else sweep_dir / JOURNAL
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise PeftxError(f"{path}: cannot write the study's journal here ({e.strerror or e})") from None


def database_url(url: str) -> str:
    """A database URL with the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a plain
    `postgresql://` as psycopg 3, while peftx's `postgres` extra installs psycopg2."""
    plain = url.startswith("postgresql://")
    if plain and importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url
