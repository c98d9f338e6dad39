"""MLflow tracking: store resolution, experiments, the run lifecycle and retrying writes.

Every write goes through `RunLogger`, which names its run explicitly (MlflowClient), so the
same code works for a single run, for jobs of a sweep sharing one process, and for jobs in
other processes. The run's final status always reflects how it ended: FINISHED, FAILED (an
exception, with the message as the `error` tag) or KILLED (Ctrl-C); never RUNNING.

No TensorFlow here; `log_keras_model` imports MLflow's Keras flavour only when called.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import random
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar, cast
from urllib.parse import quote, urlparse

from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hw4 import names, redaction
from hw4.config import TrackingConfig
from hw4.errors import TrackingError
from hw4.runtime import system

log = logging.getLogger(__name__)
T = TypeVar("T")

# Schemes MLflow's tracking client accepts (databases through SQLAlchemy, servers over HTTP).
DB_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql"}
KNOWN_SCHEMES = DB_SCHEMES | {"http", "https", "file", "databricks"}
DEFAULT_RETRY_S = TrackingConfig.retry_s  # one source of truth: the schema
HEALTH_TIMEOUT_S = 5
# A sqlite store another program is making (wait_while_made_elsewhere): its schema unchanged this
# long is not being made; the wait's limit.
SCHEMA_SETTLED_S = 2.0
UNVERSIONED_SETTLED_S = 15.0
SCHEMA_WAIT_S = 120.0
# MLflow 3's UI opens an experiment in its training view (not the GenAI one) with this tag.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_PORT = 5000
MACHINE_TAG = "machine"
CODE_DIR = Path(__file__).resolve().parent  # hw4's own folder, in its repository
SYSTEM_METRICS_INTERVAL_S = 2
# How PostgreSQL, MySQL and sqlite word a unique-key violation.
DUPLICATE_KEY = re.compile(r"UniqueViolation|duplicate key|Duplicate entry|UNIQUE constraint failed", re.IGNORECASE)
AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # MLflow's error codes for HTTP 401 and 403
# One redaction for everything hw4 records or prints (hw4/redaction.py: no MLflow there, so
# the console scripts can mask their output before anything heavy loads).
MASK = redaction.MASK
redact = redaction.redact
redact_params = redaction.redact_params


def resolve_uri(uri: str, base_dir: str | Path, *, what: str = "tracking.uri") -> str:
    """Make a relative sqlite path absolute against `base_dir` and create its folder. `what`
    names the setting in errors (the Optuna sweeper's storage goes through here too).

    Hydra jobs may run in their own folder (hydra.job.chdir=True), so relative paths must not
    depend on the process's working directory.
    """
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in KNOWN_SCHEMES:
        raise TrackingError(
            f"{what} {redact(uri)!r} is not a tracking URI: expected sqlite:///PATH, "
            "http(s)://HOST:PORT, postgresql://... or another MLflow store"
        )
    if scheme != "sqlite":
        return uri
    path = uri[len("sqlite:///") :]
    if not path or uri[: len("sqlite:///")] != "sqlite:///":
        raise TrackingError(f"{what} {redact(uri)!r}: a sqlite URI reads sqlite:///relative/path.db")
    if path == ":memory:":
        return uri
    db = Path(path) if Path(path).is_absolute() else Path(base_dir) / path
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"tracking store folder {db.parent} cannot be created ({exc})") from None
    return f"sqlite:///{db}"


def artifact_location(uri: str, artifact_root: str, base_dir: str | Path) -> Optional[str]:
    """Where a new experiment keeps artifacts: beside a local sqlite store, else the server's choice."""
    if not uri.startswith("sqlite:///"):
        return None
    root = Path(artifact_root)
    root = root if root.is_absolute() else Path(base_dir) / root
    return root.resolve().as_uri()


def is_transient(exc: BaseException) -> bool:
    """Errors that a second try may not meet: a locked or busy database, a dropped connection,
    a server that is overloaded or restarting. Not: a missing run, a bad value, a permission."""
    import requests
    import sqlalchemy.exc
    from mlflow.protos.databricks_pb2 import REQUEST_LIMIT_EXCEEDED, TEMPORARILY_UNAVAILABLE, ErrorCode

    cause: Optional[BaseException] = exc
    while cause is not None:
        if isinstance(cause, (sqlalchemy.exc.OperationalError, requests.ConnectionError, requests.Timeout,
                            requests.exceptions.RetryError, ConnectionError, TimeoutError)):  # fmt: skip
            return True
        if isinstance(cause, MlflowException) and cause.error_code in (
            ErrorCode.Name(TEMPORARILY_UNAVAILABLE),
            ErrorCode.Name(REQUEST_LIMIT_EXCEEDED),
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@dataclass
class RetryPolicy:
    """How long hw4 keeps trying a store that fails transiently: exponential backoff with full
    jitter (parallel jobs do not retry in step), within a total budget of wall time per call,
    the time spent inside the failed tries included, that rides out a server or database
    restart (tracking.retry_s)."""

    budget_s: float = DEFAULT_RETRY_S
    first_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def delays(self) -> Iterator[float]:
        """The pauses before each further try, doubling up to max_delay_s; `retry` stops them at
        the budget's deadline."""
        ceiling = self.first_delay_s
        while True:
            yield random.uniform(ceiling / 2, ceiling)
            ceiling = min(ceiling * 2, self.max_delay_s)


POLICY = RetryPolicy()  # a client's without settings (tracking.retry_s's default)


def policy_for(settings: Any) -> RetryPolicy:
    """The retry policy of a `tracking` config: its retry_s as the budget."""
    return RetryPolicy(budget_s=float(settings.get("retry_s", DEFAULT_RETRY_S)))


# Set while a retry loop runs in this thread: a retry inside it (a RetryingClient's call made by
# a function being retried) is a plain call, so retries do not multiply; the outer loop owns the
# budget.
_in_retry = threading.local()


def retry(call: Callable[[], T], what: str, policy: Optional[RetryPolicy] = None) -> T:
    """Run `call`, retrying transient store errors (`is_transient`) under the retry policy for
    its budget of wall time (time.monotonic) from the first failure, the tries' own time
    included: the store may stay down that long. The last pause ends at the deadline, for one
    last try. Any other error is raised at once. Within another `retry`, a plain call (one
    layer of retries, whoever nests them).

    Only for calls that are safe to repeat: reads; hw4's metric writes carry their own
    timestamps (a repeated point is the same row, which MLflow's stores keep once); tags and
    params are set to the same values; artifacts overwrite themselves. Creating a run is not:
    see `create_run`.
    """
    if getattr(_in_retry, "active", False):
        return call()
    policy = policy or POLICY
    deadline: Optional[float] = None  # set at the first failure: a slow call that works costs nothing
    delays = policy.delays()
    attempt = 0
    _in_retry.active = True
    try:
        while True:
            attempt += 1
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                deadline = now + policy.budget_s if deadline is None else deadline
                if now >= deadline:
                    raise
                delay = min(next(delays), deadline - now)
                log.warning("%s failed (%s); retry %d in %.1fs", what, first_line(exc), attempt, delay)
                time.sleep(delay)
    finally:
        _in_retry.active = False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__


# Client calls that are not safe to repeat blindly: a retry could create a second object.
NOT_REPEATABLE = frozenset({"create_run", "create_experiment", "create_registered_model", "create_model_version"})


class RetryingClient:
    """An MlflowClient whose every call goes through the retry policy (reads included), so no
    caller can forget it; the calls in NOT_REPEATABLE pass straight through (see create_run).
    Made by `retrying`, `connect` and `client_for`, which hand it out typed as the MlflowClient
    it stands for: the type checker holds every call to MlflowClient's signatures."""

    def __init__(self, client: MlflowClient, policy: Optional[RetryPolicy] = None):
        self._client = client
        self.policy = policy or POLICY

    @property
    def raw(self) -> MlflowClient:
        return self._client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name in NOT_REPEATABLE or name.startswith("_"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return retry(lambda: attribute(*args, **kwargs), name, self.policy)

        return call


def retrying(client: MlflowClient, policy: Optional[RetryPolicy] = None) -> MlflowClient:
    """`client` behind a retry policy (once: a retrying client keeps its own unless `policy` is
    given), with MlflowClient's methods and signatures."""
    if isinstance(client, RetryingClient) and (policy is None or policy == client.policy):
        return cast(MlflowClient, client)
    return cast(MlflowClient, RetryingClient(unwrap(client), policy))


def policy_of(client: MlflowClient) -> RetryPolicy:
    """The retry policy a client's calls go through (the default for a plain client)."""
    return client.policy if isinstance(client, RetryingClient) else POLICY


def unwrap(client: MlflowClient) -> MlflowClient:
    """The plain client under a retrying one: its calls are tried once."""
    return client.raw if isinstance(client, RetryingClient) else client


def client_for(uri: str, policy: Optional[RetryPolicy] = None) -> MlflowClient:
    """A retrying client for a store already checked (a sweep's, named in its context)."""
    quiet_store_logs()
    prefer_hw4_retries(uri)
    return retrying(open_client(uri), policy)  # it may still be the first to open a new sqlite store


def sqlite_file(uri: str) -> Optional[str]:
    """The database file of a sqlite URI (None for other stores and sqlite's memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if not path or path == ":memory:" else path


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Held while this process opens a sqlite store. MLflow creates (or migrates) a store's tables
    when a client first opens it, and two processes doing so at once fail ("table ... already
    exists"): one creates them, the others wait and find them made. An exclusive flock on
    `<database>.lock` beside the file, as hw4.sweep.study.creating does for a new Optuna
    storage. A folder where the lock cannot be written (a read-only store) goes without."""
    path = sqlite_file(uri)
    try:
        handle = open(f"{path}.lock", "a") if path else None
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process opening the store %s", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def open_client(uri: str) -> MlflowClient:
    """`MlflowClient(uri)` (a database store connects, and creates its tables, here already),
    safe for a sqlite store that other processes are opening for the first time too."""
    path = sqlite_file(uri)
    with store_lock(uri):  # hw4's own processes take turns
        if path is not None:
            settle_sqlite_store(path)
        return MlflowClient(uri)


def settle_sqlite_store(path: str) -> None:
    """MLflow creates and migrates a new store's schema in place when a client first opens it,
    and two processes doing so at once break each other (seen: "table ... already exists", "No
    such index", both failing and the store left half-migrated). hw4's processes take turns
    (store_lock), but `mlflow ui` or a notebook's MlflowClient do not: so hw4 makes a new store
    in a private file and links it into place in one step, and waits while a store it did not
    make is still being made."""
    if not os.path.exists(path) and link_new_store(path):
        return
    wait_while_made_elsewhere(path)


def link_new_store(path: str) -> bool:
    """Create and migrate a store in a private file beside `path`, then hard-link it to `path`
    (atomic, and refused if another process made `path` meanwhile). False where it is not ours:
    made by another process first, or a folder or file system that cannot take it (then MLflow
    opens the store in place, as without hw4, and says what is wrong)."""
    # The store MlflowClient would make; its engine disposed: no connection open at the link.
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    folder, name = os.path.split(path)
    if os.path.isdir(folder or ".") and not os.access(folder or ".", os.W_OK):
        return False  # read-only: MLflow's own open says so (its retries would run twice)
    private = os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    try:
        _get_sqlalchemy_store(f"sqlite:///{private}", None).engine.dispose()
        os.link(private, path)
        return True
    except FileExistsError:  # another process made it first
        return False
    except Exception as exc:  # noqa: BLE001 - no hard links here, say: MLflow makes it in place
        log.debug("could not make the store %s aside (%s): MLflow makes it in place", path, first_line(exc))
        return False
    finally:
        for leftover in (private, f"{private}-journal"):
            with contextlib.suppress(OSError):
                os.remove(leftover)


def wait_while_made_elsewhere(path: str) -> None:
    """Return once the sqlite store at `path` has MLflow's current schema, reading it without
    writing. Another program making it changes it all the time (MLflow commits each migration);
    one unchanged for SCHEMA_SETTLED_S is a store of another MLflow (or UNVERSIONED_SETTLED_S
    without a revision: MLflow loads its migrations before the first one), which MLflow then
    upgrades or refuses in its own words, as it does a file it cannot read."""
    if not os.path.exists(path):  # no one is making it (MLflow makes it in place, or says why not)
        return
    current = current_schema()
    deadline = time.monotonic() + SCHEMA_WAIT_S
    seen: Optional[SchemaState] = None
    since, waiting = time.monotonic(), False
    while time.monotonic() < deadline:
        try:
            state = schema_state(path)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):  # not its maker's lock: MLflow's open says what is wrong
                return
            state = None
        if state is not None and state.revision == current:
            return
        if state is None or state != seen:  # locked by its maker, or changed: still being made
            if seen is not None and not waiting:
                log.info("waiting for another process making the tracking store %s", path)
                waiting = True
            seen, since = state, time.monotonic()
        elif time.monotonic() - since >= (SCHEMA_SETTLED_S if state.revision else UNVERSIONED_SETTLED_S):
            return
        time.sleep(0.05)
    log.warning(
        "the tracking store %s is not at MLflow's schema after %.0f s: opening it as it is", path, SCHEMA_WAIT_S
    )


@functools.cache
def current_schema() -> str:
    """The schema revision this MLflow makes and expects (its own check's, private)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


@dataclass(frozen=True)
class SchemaState:
    revision: Optional[str]  # alembic's, once MLflow's first migration is committed
    tables: int


def schema_state(path: str) -> SchemaState:
    """What a sqlite file holds of MLflow's schema; sqlite3.OperationalError where it cannot be read
    ("database is locked": a writer holds it)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=0.2)
    ) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = (
            db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        )
    return SchemaState(revision[0] if revision else None, len(tables))


def create_run(client: MlflowClient, experiment_id: str, run_name: str, tags: Mapping[str, Any]) -> Run:
    """`client.create_run`, safe to retry: a first attempt that the store committed but whose
    answer was lost (a timeout) is found again by its creation token, not created twice."""
    token = uuid.uuid4().hex
    tags = {**{k: str(v) for k, v in tags.items()}, names.CREATION_TOKEN: token}
    attempts = 0
    policy = policy_of(client)
    client = unwrap(client)  # one retry loop here, not one per call inside it

    def attempt() -> Run:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            found = client.search_runs(
                [experiment_id], filter_string=f"tags.`{names.CREATION_TOKEN}` = '{token}'", max_results=1
            )
            if found:
                return found[0]
        return client.create_run(experiment_id, run_name=run_name, tags=tags)

    return retry(attempt, f"create run {run_name}", policy)


class _OneLineDatabaseErrors(logging.Filter):
    """MLflow logs every failed database call with its traceback before raising it; hw4's retry
    policy says it in one line (and the final error is the user's to see)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


# MLflow retries an HTTP call on its own for minutes (7 tries, backoff factor 2) and waits 120 s
# for a reply (a server whose database restarted held one that long, here) before hw4 sees the
# error: hw4's retry policy owns the budget instead (tracking.retry_s), and a request left
# without a reply for 30 s is tried again. Defaults only: a user's MLFLOW_HTTP_REQUEST_* win.
MLFLOW_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def prefer_hw4_retries(uri: str) -> None:
    if urlparse(uri).scheme in ("http", "https"):
        for name, value in MLFLOW_HTTP_RETRIES.items():
            os.environ.setdefault(name, value)


def quiet_store_logs() -> None:
    # "Creating initial MLflow database tables..." on a new sqlite store: nothing to act on.
    store_log = logging.getLogger("mlflow.store.db.utils")
    store_log.setLevel(logging.WARNING)
    if not any(isinstance(f, _OneLineDatabaseErrors) for f in store_log.filters):
        store_log.addFilter(_OneLineDatabaseErrors())


def connect(uri: str, policy: Optional[RetryPolicy] = None) -> MlflowClient:
    """A retrying client for `uri`, once the store has answered (checked before any data is
    loaded; a store that does not answer now fails the command at once)."""
    quiet_store_logs()
    prefer_hw4_retries(uri)
    if urlparse(uri).scheme in ("http", "https"):
        check_server(uri)
    try:
        client = open_client(uri)
        client.search_experiments(max_results=1)
    except Exception as exc:
        code = getattr(exc, "error_code", "")
        if code in AUTH_ERRORS:  # a server with authentication
            raise TrackingError(refused(uri, 401 if code == "UNAUTHENTICATED" else 403)) from None
        raise TrackingError(f"tracking store {redact(uri)} cannot be used: {first_line(exc)}") from None
    return retrying(client, policy)


def refused(uri: str, status: int) -> str:
    if status == 401:
        return (
            f"tracking store {redact(uri)} refused the request (401): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    return f"tracking store {redact(uri)} refused the request (403): this user has no permission for it"


def check_server(uri: str) -> None:
    """Ask the server's health endpoint once: MLflow's client would retry a dead server for
    minutes. Through MLflow's own request helper, so its auth and TLS settings apply
    (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD, MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH, ...)."""
    from mlflow.tracking._tracking_service.utils import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri), "/health", "GET",
            max_retries=0, timeout=HEALTH_TIMEOUT_S, raise_on_status=False,
        )  # fmt: skip
    except Exception as exc:  # connection refused, TLS, timeout: MLflow wraps them variously
        raise TrackingError(f"tracking store {redact(uri)} cannot be used: {first_line(exc)}") from None
    if response.status_code in (401, 403):
        raise TrackingError(refused(uri, response.status_code))
    if response.status_code != 200:
        raise TrackingError(f"tracking store {redact(uri)} cannot be used: /health answered {response.status_code}")


def get_or_create_experiment(client: MlflowClient, name: str, location: Optional[str]) -> str:
    """The experiment's id; safe when parallel jobs race to create it."""
    try:
        experiment = client.get_experiment_by_name(name)
    except MlflowException as exc:
        if exc.error_code in AUTH_ERRORS:  # a server with authentication: one line, not a traceback
            status = 401 if exc.error_code == "UNAUTHENTICATED" else 403
            raise TrackingError(f"{refused(client.tracking_uri, status)} (experiment {name!r})") from None
        raise
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted: restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
            "or set tracking.experiment to another name"
        )
    if experiment is not None:
        if EXPERIMENT_KIND[0] not in experiment.tags:  # made before hw4 set it
            retrying(client).set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    except MlflowException as exc:
        experiment = client.get_experiment_by_name(name)  # another process won the race
        if experiment is None:
            raise TrackingError(f"cannot create MLflow experiment {name!r}: {exc}") from None
        return experiment.experiment_id


def open_experiment(settings: Any, launch_dir: str | Path) -> tuple[MlflowClient, str]:
    """Resolve the store from the `tracking` config, check it answers, get the experiment id;
    the client retries within the config's retry_s."""
    uri = resolve_uri(settings.uri, launch_dir)
    client = connect(uri, policy_for(settings))
    location = artifact_location(uri, settings.artifact_root, launch_dir)
    return client, get_or_create_experiment(client, settings.experiment, location)


def does_not_exist(exc: BaseException) -> bool:
    """The store's answer that a run (or model, experiment) is not there: the one error that
    means "no such run". Anything else (a network error, a refusal) is not that."""
    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def get_run_or_none(client: MlflowClient, run_id: str) -> Optional[Run]:
    """The run, or None if the store does not hold it; other errors (after retries) raise."""
    try:
        return retrying(client).get_run(run_id)
    except MlflowException as exc:
        if does_not_exist(exc):
            return None
        raise


def check_resumable(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """The run exists, is not finished, and was started with the same settings."""
    run = get_run_or_none(client, run_id)
    if run is None:
        raise TrackingError(f"trainer.resume={run_id}: no such run in {redact(client.tracking_uri)}")
    if run.info.status == "FINISHED":
        raise TrackingError(f"trainer.resume={run_id}: the run already finished")
    differences = [
        f"{key}={value} (run has {run.data.params.get(key)})"
        for key, value in params.items()
        if not names.is_bookkeeping(key) and key in run.data.params and run.data.params[key] != str(value)
    ]
    if differences:
        raise TrackingError(f"trainer.resume={run_id}: settings differ from the run's: {', '.join(differences)}")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"name": "mlp"}} -> {"model.name": "mlp"}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def machine() -> str:
    """This machine in one line: CPU model, the cores this process may use, OS and architecture."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = system.usable_cores()
    return f"{cpu}, {cores} cores, {platform.system()} {platform.machine()}"


def source_tags(entrypoint: str, directory: str | Path) -> dict[str, str]:
    """MLflow's standard system tags, which its UI shows (Source, Version, User columns), and the
    machine the run ran on."""
    import getpass

    from mlflow.utils import mlflow_tags

    tags = {
        mlflow_tags.MLFLOW_SOURCE_NAME: entrypoint,
        mlflow_tags.MLFLOW_SOURCE_TYPE: "LOCAL",
        mlflow_tags.MLFLOW_USER: getpass.getuser(),
        MACHINE_TAG: machine(),
    }
    commit = git_commit(CODE_DIR) or git_commit(directory)  # the code's commit, wherever it ran
    if commit:
        tags[mlflow_tags.MLFLOW_GIT_COMMIT] = commit
    return tags


# MLflow prints "View run <name> at: <tracking URI>/#/..." when a run against a server ends,
# the URI's password included. hw4 prints its own link instead (where_to_see, redacted): MLflow's
# documented switch turns its lines off in this process and the workers it starts.
SUPPRESS_RUN_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def hide_mlflow_run_links() -> None:
    os.environ[SUPPRESS_RUN_LINKS] = "true"


# On import, before any store call of hw4 can end a run or log a URI.
hide_mlflow_run_links()
redaction.redact_log_records()


def where_to_see(uri: str, experiment_id: str, run_id: Optional[str] = None) -> str:
    """How to open a run (or an experiment's runs) in MLflow's UI: the command for a local
    store, and the page. MLflow 3's UI opens experiments in its GenAI view unless told
    otherwise (a per-browser switch): the link asks for the model-training view."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    page += "?workflowType=machine_learning"
    uri = redact(uri)
    if urlparse(uri).scheme in ("http", "https"):
        return f"see it at {uri.rstrip('/')}/{page}"
    return f"see it: mlflow ui --backend-store-uri {uri} --port {UI_PORT}, then http://127.0.0.1:{UI_PORT}/{page}"


def git_commit(directory: str | Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class RunLogger:
    """Writes to one MLflow run; every write is retried on transient store errors."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = retrying(client)
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = [Param(k, str(v)) for k, v in params.items()]
        self.client.log_batch(self.run_id, params=entries)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_series(self, series: Mapping[str, Sequence[float]]) -> None:
        """Metrics with one value per step (step = position), in batches of MLflow's limit."""
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, values in series.items() for step, v in enumerate(values)]
        for start in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[start : start + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """`data` as the artifact `artifact_file` (e.g. a PNG drawn once and logged by many runs)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            folder = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_artifacts(self, local_dir: str | Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, Any]) -> None:
        """The data this run saw, as an MLflow run input (shown in the UI's Datasets column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(dict(profile)),
        )
        inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]

        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException as exc:
            # Parallel jobs race to record the same dataset in the experiment: the store
            # refuses the second insert. The dataset exists now; linking it again finds it.
            if not DUPLICATE_KEY.search(str(exc)):
                raise
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_keras_model(self, model: Any, example: Any, prediction: Any, name: str = "model") -> None:
        """The model in MLflow's Keras flavour, linked to this run, with the signature of
        `example` -> `prediction` (the model's output on it, already computed by the caller);
        `example` is also the model's input example (MLflow's UI and serving example show it)."""
        import mlflow
        from mlflow.models import Model, infer_signature

        signature = infer_signature(example, prediction)
        mlflow.set_tracking_uri(self.client.tracking_uri)  # Model.log writes through the global URI
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        logged = self._logged_model(name, experiment_id)
        with without_progress_bars():  # MLflow predicts the input example to check it: no bar
            retry(
                lambda: Model.log(
                    artifact_path=None,  # MLflow 3 names logged models by `name`
                    name=name,
                    flavor=KerasFlavor,
                    run_id=self.run_id,
                    model_id=logged.model_id,
                    model=model,
                    signature=signature,
                    input_example=example,
                    pip_requirements=model_requirements(),
                ),
                "log model",
                policy_of(self.client),
            )

    def _logged_model(self, name: str, experiment_id: str) -> Any:
        """This run's logged model `name`, created once: a retry after a lost answer finds the
        one the store already made."""
        import mlflow

        def attempt() -> Any:
            found = unwrap(self.client).search_logged_models(
                [experiment_id], filter_string=f"source_run_id = '{self.run_id}' AND name = '{name}'"
            )
            if found:
                return found[0]
            # Created here so it lands in the run's experiment without a fluent "active run".
            return mlflow.initialize_logged_model(name=name, source_run_id=self.run_id, experiment_id=experiment_id)

        return retry(attempt, "initialize logged model", policy_of(self.client))


@contextmanager
def without_progress_bars() -> Iterator[None]:
    """What is printed to stdout during the block dropped: the progress bar of the `predict` that
    MLflow's Keras flavour runs on the input example (Keras takes no verbosity from it; with
    Keras' interactive logging off, the bar goes to the log instead). Warnings and errors go to
    the log and stderr, which stay."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        yield


class KerasFlavor:
    """MLflow's Keras flavour, its model folder made first: its save_model writes the input
    example into the folder before it creates it (MLflow 3.17: FileNotFoundError on
    input_example.json when logged through Model.log)."""

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def model_requirements() -> list[str]:
    """Stated, not inferred: inference reloads the model in a subprocess (slow)."""
    import keras
    import tensorflow as tf

    return [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]


def prepare_model_logging() -> None:
    """Do the slow once-per-process parts of logging a model ahead of time (a background thread
    runs it during training): MLflow's Keras flavour imports, and MLflow's check of the stated
    requirements against the installed packages, which first maps every installed package
    (about 0.6 s) and caches that map for the process."""
    import mlflow.keras  # noqa: F401
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    warn_dependency_requirement_mismatches(model_requirements())


@contextmanager
def system_metrics(client: MlflowClient, run_id: str, enabled: bool) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network) sampled while the block runs."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=client.tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


@contextmanager
def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: Optional[Mapping[str, Any]] = None,
    *,
    parent_run_id: Optional[str] = None,
    run_id: Optional[str] = None,
) -> Iterator[RunLogger]:
    """An MLflow run that always ends with the status of how the block ended.

    Created through the client, not mlflow.start_run: no process-wide "active run", so sweep jobs
    sharing a process, or a parent run held open around them, cannot get mixed up. With
    `run_id`, an existing run is reopened (resume) instead.
    """
    client = retrying(client)
    run_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        run_tags[names.PARENT_RUN] = parent_run_id
    reopened = run_id is not None
    if run_id is None:
        run_id = create_run(client, experiment_id, run_name, run_tags).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    logger = RunLogger(client, run_id)
    status = RunStatus.FAILED
    try:
        if reopened:  # this attempt's tags (its launch, its job number), not the last one's error
            if names.ERROR in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, names.ERROR)
            logger.set_tags(run_tags)
        yield logger
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    except BaseException as exc:
        # A store that stayed unreachable beyond the retry budget: the run is not broken, so it
        # ends resumable (KILLED, its checkpoint kept), not FAILED, which a continue retrains.
        status = RunStatus.KILLED if is_transient(exc) else RunStatus.FAILED
        try:
            logger.set_tags({names.ERROR: redact(f"{type(exc).__name__}: {exc}")[:5000]})
        except Exception:  # the run still has to end even if the store is gone
            log.warning("could not record the error on run %s", run_id)
        raise
    finally:
        end_run(client, run_id, status)


def end_run(client: MlflowClient, run_id: str, status: int | str) -> None:
    """End the run with `status`. A store still unreachable after the retry budget leaves it
    RUNNING, which resumes like KILLED once its lock is free: said once, not a second traceback
    over the first error."""
    try:
        retrying(client).set_terminated(run_id, status if isinstance(status, str) else RunStatus.to_string(status))
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.error(
            "run %s could not be ended (%s): it stays RUNNING and resumes like a KILLED run", run_id, first_line(exc)
        )
        raise
