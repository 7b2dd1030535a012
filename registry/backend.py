"""The MLflow backend of the registry: client creation, retries, error translation.

Only MLflow's public API is used (``MlflowClient``, ``mlflow.artifacts``). Where the
registry lives is only a URI (``Settings.registry_uri``): by default MLflow on SQLite with a
local artifact folder under the saekit home; for a team, an MLflow tracking server
(``http://...``) on PostgreSQL with proxied artifacts. Nothing here branches on which,
except where the experiment's artifact root is chosen.

Every backend error leaves this module as a one-line saekit error (NotFoundError,
InputError or RegistryError) with URI passwords, tokens and credentials masked.

One ``Backend`` per registry URI is kept for the process (``connect``): creating an MLflow
client and migrating a database is expensive, and the experiment id and the registered
models already created are facts of that registry.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from saekit.schemas import InputError, NotFoundError, RegistryError, SaekitError
from saekit.schemas.masking import mask, without_password
from saekit.schemas.settings import Settings, current

if TYPE_CHECKING:
    from mlflow import MlflowClient

EXPERIMENT = "saekit-registry"


# --- where the registry lives, said without secrets ---------------------------------------


def tracking_uri(settings: Settings | None = None) -> str:
    """The MLflow tracking (and registry) URI: Settings.registry_uri or the embedded SQLite."""
    settings = settings or current()
    if settings.registry_uri:
        return settings.registry_uri
    return f"sqlite:///{settings.home.resolve() / 'registry' / 'mlflow.db'}"


def where(uri: str) -> str:
    return f"registry at {mask(uri)}"


# --- error translation and retries ---------------------------------------------------------


@contextlib.contextmanager
def errors(what: str | None = None, *, uri: str) -> Iterator[None]:
    """Turn MLflow and connection errors into one-line saekit errors with masked URIs."""
    try:
        yield
    except SaekitError:
        raise
    except Exception as err:  # noqa: BLE001 - every backend error becomes a RegistryError
        code = getattr(err, "error_code", None)
        msg = getattr(err, "message", None) or str(err) or err.__class__.__name__
        msg = mask(msg.strip().splitlines()[0] if msg.strip() else err.__class__.__name__)
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(msg, where=what) from None
        if code == "INVALID_PARAMETER_VALUE":
            raise InputError(msg, where=what) from None
        low = msg.lower()
        if any(s in low for s in ("timed out", "timeout expired", "timeout exception")):  # say what bounds it
            settings = current()
            connect = "connect timeout" in low or "timeout expired" in low  # urllib3's, libpq's
            raise RegistryError(
                f"no {'connection' if connect else 'answer'} within "
                f"{settings.connect_timeout if connect else settings.read_timeout:g} s "
                f"(SAEKIT_{'CONNECT' if connect else 'READ'}_TIMEOUT)", where=where(uri)) from None
        raise RegistryError(f"{err.__class__.__name__}: {msg}", where=where(uri)) from None


def error_code(err: BaseException) -> str | None:
    """MLflow's error code of ``err`` (RESOURCE_DOES_NOT_EXIST, ...), if it has one."""
    return getattr(err, "error_code", None)


_BUSY_STATUS = re.compile(r"\b(429|502|503|504)\b(?!\d)")


def _transient(err: Exception) -> bool:
    """Lock, version and server-busy errors, worth another try. Not a timeout: the request
    already waited its time and MLflow retried it (see _quiet_mlflow); another round of
    tries would multiply the wait the settings bound."""
    text = str(err).lower()
    if "timed out" in text or "timeout" in text:
        return False
    return bool(_BUSY_STATUS.search(text)) or any(
        s in text
        for s in ("database is locked", "model version creation error", "could not serialize", "deadlock",
                  "unique constraint", "duplicate key", "integrityerror", "connection reset", "remotedisconnected")
    )


def retry(fn, *args, attempts: int = 12, **kwargs):
    """Call fn, retrying the transient errors concurrent writers cause (locks, version races)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except SaekitError:
            raise
        except Exception as err:  # noqa: BLE001
            if attempt == attempts - 1 or not _transient(err):
                raise
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
    raise AssertionError("unreachable")


# --- the client ------------------------------------------------------------------------------


def _quiet_mlflow(settings: Settings) -> None:
    """MLflow's info logs, warnings and telemetry have no place in saekit's output."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Bounded, not minutes: each request waits at most the settings' read timeout (MLflow reads
    # MLFLOW_HTTP_REQUEST_TIMEOUT, whole seconds, at every request; mlflow/utils/rest_utils.py),
    # and is retried at most twice with 1 s, 2 s backoff (its default is 7 retries, factor 2).
    # A PostgreSQL registry connects within the connect timeout (libpq reads PGCONNECT_TIMEOUT).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(math.ceil(settings.read_timeout))
    os.environ["PGCONNECT_TIMEOUT"] = str(max(2, math.ceil(settings.connect_timeout)))  # libpq's minimum is 2
    if settings.debug:
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    import mlflow  # noqa: F401 - configures its loggers on import; we lower them after

    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", message=r".*[Mm][Ll]flow.*")


def _sqlite_template(settings: Settings) -> Path:
    import mlflow

    return settings.cache_dir / f"mlflow-{mlflow.__version__}-empty.db"


def _seed_sqlite(db: Path, template: Path) -> None:
    """A new embedded registry starts as a copy of an empty, migrated MLflow database:
    MLflow's schema migrations take seconds, a copy takes milliseconds."""
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists() and template.is_file():
        tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        try:
            os.link(tmp, db)  # fails if another process created it meanwhile: keep theirs
        except OSError:
            pass
        tmp.unlink()


def _save_sqlite_template(db: Path, template: Path) -> None:
    if template.is_file() or not db.is_file():
        return
    import sqlite3

    con = sqlite3.connect(db)
    try:
        # MLflow creates its "Default" experiment (id 0) with the tables.
        empty = all(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] <= (t == "experiments")
                    for t in ("experiments", "registered_models", "runs")
                    if con.execute("SELECT 1 FROM sqlite_master WHERE name=?", (t,)).fetchone())
        migrated = con.execute("SELECT 1 FROM sqlite_master WHERE name='alembic_version'").fetchone()
    finally:
        con.close()
    if not (empty and migrated):
        return
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    shutil.copyfile(db, tmp)
    os.replace(tmp, template)


_DATABASES = ("postgresql", "mysql", "mssql")


def _try_database(uri: str) -> None:
    """Open one connection to a database registry, bounded by the connect timeout.

    MLflow tries to open a database it cannot reach 10 times, with ~100 s of sleeps between
    the tries (mlflow/store/db/utils.py, create_sqlalchemy_engine_with_retry): one try here
    first ends a dead or silent server in the time the settings give."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _new_client(uri: str, settings: Settings) -> MlflowClient:
    _quiet_mlflow(settings)
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if db is not None:
        _seed_sqlite(db, _sqlite_template(settings))
    with errors(uri=uri):
        from mlflow import MlflowClient

        if uri.split(":", 1)[0].split("+", 1)[0] in _DATABASES:
            _try_database(uri)

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        if db is not None and not _sqlite_template(settings).is_file():
            client.search_experiments(max_results=1)  # creates and migrates the database
            _save_sqlite_template(db, _sqlite_template(settings))
    return client


@dataclass
class Backend:
    """One registry: its URI, its MLflow client, and what is known of it."""

    uri: str
    client: MlflowClient
    artifact_root: str | None
    """Where a new experiment keeps its artifacts: None lets a server choose (proxied)."""
    _experiment_id: str | None = None
    _models: set[str] = field(default_factory=set)

    def where(self) -> str:
        return where(self.uri)

    def errors(self, what: str | None = None) -> contextlib.AbstractContextManager[None]:
        return errors(what, uri=self.uri)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create_experiment()
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        exp = retry(self.client.get_experiment_by_name, EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        try:
            return retry(self.client.create_experiment, EXPERIMENT, artifact_location=self.artifact_root)
        except Exception:  # noqa: BLE001 - another process created it first
            exp = retry(self.client.get_experiment_by_name, EXPERIMENT)
            if exp is None:
                raise
            return exp.experiment_id

    def ensure_model(self, name: str) -> None:
        """Create the registered model ``name`` unless it exists."""
        if name in self._models:
            return
        try:
            retry(self.client.create_registered_model, name)
        except Exception as err:  # noqa: BLE001
            if error_code(err) != "RESOURCE_ALREADY_EXISTS":
                raise
        self._models.add(name)

    def upload_file(self, run_id: str, local: Path, artifact_path: str) -> None:
        """Upload one file under the run's artifact root (one PUT through a server's proxy)."""
        retry(self.client.log_artifact, run_id, str(local), artifact_path)

    def download_file(self, artifact_uri: str, dest_dir: Path) -> Path:
        """Download the one file ``artifact_uri`` names into ``dest_dir``."""
        from mlflow.artifacts import download_artifacts

        return Path(retry(download_artifacts, artifact_uri=artifact_uri, dst_path=str(dest_dir),
                          tracking_uri=self.uri, registry_uri=self.uri))

    def download_run_folder(self, run_id: str, path: str, dest_dir: Path) -> Path:
        """Download a folder of a run's artifacts into ``dest_dir``; the local folder."""
        return Path(retry(self.client.download_artifacts, run_id, path, str(dest_dir)))


_BACKENDS: dict[str, Backend] = {}  # one per registry URI for the process (see the module doc)


def connect(settings: Settings | None = None) -> Backend:
    """The backend of the registry ``settings`` name (created on first use)."""
    settings = settings or current()
    uri = tracking_uri(settings)
    backend = _BACKENDS.get(uri)
    if backend is None:
        # A server chooses its own (proxied) artifact root; a database URI gets a local folder.
        root = None if uri.startswith(("http://", "https://", "databricks")) else (
            (settings.home.resolve() / "registry" / "artifacts").as_uri()
        )
        backend = _BACKENDS[uri] = Backend(uri, _new_client(uri, settings), root)
    return backend
