"""Tracking: URI resolution, experiments, run statuses, retries (no TensorFlow)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from hw4 import tracking
from hw4.errors import TrackingError


def test_relative_sqlite_uri_resolves_against_the_launch_dir(tmp_path):
    uri = tracking.resolve_uri("sqlite:///mlruns/mlflow.db", tmp_path)
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()


def test_absolute_and_server_uris_are_kept(tmp_path):
    assert tracking.resolve_uri(f"sqlite:///{tmp_path}/x.db", "/elsewhere") == f"sqlite:///{tmp_path}/x.db"
    assert tracking.resolve_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


@pytest.mark.parametrize("uri", ["mlruns", "ftp://host/x", "sqlite:/x.db", "not a uri"])
def test_malformed_uris_are_rejected(uri, tmp_path):
    with pytest.raises(TrackingError, match="tracking.uri"):
        tracking.resolve_uri(uri, tmp_path)


def test_unreachable_server_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(TrackingError, match=r"tracking store http://127.0.0.1:9 cannot be used"):
        tracking.connect("http://127.0.0.1:9")


def test_experiment_artifacts_live_beside_a_local_store(tracking_uri, tmp_path):
    client = tracking.connect(tracking_uri)
    location = tracking.artifact_location(tracking_uri, "mlruns/artifacts", tmp_path)
    experiment_id = tracking.get_or_create_experiment(client, "exp", location)
    assert tracking.get_or_create_experiment(client, "exp", location) == experiment_id
    assert client.get_experiment(experiment_id).artifact_location == (tmp_path / "mlruns/artifacts").as_uri()


def test_flatten_joins_keys_with_dots():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
    }


def run_and_read(uri: str, body, raises: type[BaseException] | None = None) -> "mlflow.entities.Run":  # noqa: F821
    """Run `body(run)` inside `tracking.start_run`, expecting it to raise `raises` (if given), and
    return the run as the store then holds it."""
    client = tracking.connect(uri)
    experiment_id = tracking.get_or_create_experiment(client, "statuses", None)
    opened = []

    def run_body():
        with tracking.start_run(client, experiment_id, "r", {"model": "m"}) as run:
            opened.append(run.run_id)
            body(run)

    if raises is None:
        run_body()
    else:
        with pytest.raises(raises):
            run_body()
    (run_id,) = opened
    return MlflowClient(uri).get_run(run_id)


def test_finished_run(tracking_uri):
    def body(run):
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_metrics({"loss": 0.5}, step=1)

    result = run_and_read(tracking_uri, body)
    assert result.info.status == "FINISHED"
    history = MlflowClient(tracking_uri).get_metric_history(result.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]


def test_exception_ends_the_run_failed_with_the_error_tag(tracking_uri):
    def body(run):
        raise RuntimeError("boom")

    result = run_and_read(tracking_uri, body, raises=RuntimeError)
    assert result.info.status == "FAILED"
    assert result.data.tags["error"] == "RuntimeError: boom"


def test_ctrl_c_ends_the_run_killed(tracking_uri):
    def body(run):
        raise KeyboardInterrupt

    result = run_and_read(tracking_uri, body, raises=KeyboardInterrupt)
    assert result.info.status == "KILLED" and "error" not in result.data.tags


def test_a_run_whose_store_stayed_unreachable_ends_resumable(tracking_uri):
    """Issue 21, section 2: beyond the retry budget the run ends KILLED (its checkpoint kept, a
    continue resumes it), not FAILED (which a continue trains again from scratch)."""

    def outage(run):
        raise locked()  # what a store still down after the budget raises

    result = run_and_read(tracking_uri, outage, raises=Exception)
    assert result.info.status == "KILLED"
    assert "database is locked" in result.data.tags["error"]


def test_errors_and_uris_are_recorded_without_credentials():
    """Issue 21, section 4: one function masks every URI's password or token."""
    text = "cannot reach postgresql://alice:pw@db:5432/mlflow or https://tok3n@host/x?token=abc&a=1"
    assert (
        tracking.redact(text)
        == "cannot reach postgresql://alice:***@db:5432/mlflow or https://***@host/x?token=***&a=1"
    )
    assert tracking.redact("sqlite:////tmp/mlruns/mlflow.db") == "sqlite:////tmp/mlruns/mlflow.db"
    assert tracking.redact_params({"tracking.uri": "mysql://u:p@h/db", "optimizer.lr": 0.1}) == {
        "tracking.uri": "mysql://u:***@h/db", "optimizer.lr": 0.1,
    }  # fmt: skip
    assert "pw" not in tracking.where_to_see("http://bob:pw@127.0.0.1:5000", "1")


def test_a_reopened_run_drops_the_error_of_its_interrupted_attempt(tracking_uri):
    """Resuming a run that failed mid-way: while it trains again, and once it finishes, the
    error of the earlier attempt no longer shows on it."""

    def fail(run):
        raise OSError("disk full")

    failed = run_and_read(tracking_uri, fail, raises=OSError)
    assert failed.data.tags["error"] == "OSError: disk full"
    client = tracking.connect(tracking_uri)
    with tracking.start_run(client, failed.info.experiment_id, "r", run_id=failed.info.run_id) as run:
        assert "error" not in client.get_run(run.run_id).data.tags  # not while it runs again either
        run.log_metrics({"loss": 0.1}, step=0)
    reopened = client.get_run(failed.info.run_id)
    assert reopened.info.status == "FINISHED" and "error" not in reopened.data.tags


@pytest.mark.slow  # fresh processes import MLflow
def test_two_processes_creating_one_experiment_at_once_get_the_same_one(tracking_uri, tmp_path):
    """Parallel jobs or users starting together: one experiment, and both use it."""
    # Each process imports MLflow and connects, says it is ready, then waits for the start.
    go = tmp_path / "go"
    script = "\n".join(
        [
            "import sys, time",
            "from pathlib import Path",
            "from hw4 import tracking",
            f"client = tracking.connect({tracking_uri!r})",
            "Path(sys.argv[1]).touch()",
            f"while not Path({str(go)!r}).exists(): time.sleep(0.001)",
            "print(tracking.get_or_create_experiment(client, 'race', None))",
        ]
    )
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), [p.stderr.read()[-2000:] for p in processes]
        time.sleep(0.01)
    go.touch()
    results = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err[-2000:] for _, err in results]
    ids = {out.strip() for out, _ in results}
    found = [e for e in MlflowClient(tracking_uri).search_experiments() if e.name == "race"]
    assert len(found) == 1 and ids == {found[0].experiment_id}


def locked() -> Exception:
    """What MLflow's SQL store raises for a locked sqlite file."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    try:
        raise sqlalchemy.exc.OperationalError("INSERT ...", {}, Exception("database is locked"))
    except sqlalchemy.exc.OperationalError as cause:
        try:
            raise MlflowException(str(cause), error_code="TEMPORARILY_UNAVAILABLE") from cause
        except MlflowException as exc:
            return exc


class FakeClock:
    """hw4.tracking's clock, simulated: sleeps and the calls' own time advance it, nothing waits."""

    def __init__(self):
        self.now = 0.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds

    def time(self) -> float:  # wall-clock timestamps (metrics) stay real
        return time.time()


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tracking, "time", fake)
    return fake


def always_down(clock: FakeClock, call_s: float, calls: list):
    """A store call that takes `call_s` of simulated time and fails transiently, every time."""
    import sqlalchemy.exc

    def call(*args, **kwargs):
        calls.append(clock.now)
        clock.now += call_s
        raise sqlalchemy.exc.OperationalError("SELECT ...", {}, Exception("could not connect to server"))

    return call


def test_retry_recovers_from_transient_errors(clock):
    calls = []

    def flaky():
        calls.append(1)
        clock.now += 1.0
        if len(calls) < 3:
            raise locked()
        return "ok"

    assert tracking.retry(flaky, "flaky") == "ok" and len(calls) == 3
    calls.clear()

    def dropped():
        calls.append(1)
        clock.now += 0.1
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(ConnectionResetError):
        tracking.retry(dropped, "dropped", policy=tracking.RetryPolicy(budget_s=1.0))
    assert len(calls) >= 2


@pytest.mark.parametrize("outage_s, budget_s, rides_it_out", [(60, tracking.DEFAULT_RETRY_S, True), (60, 20, False)])
def test_the_retry_budget_rides_out_a_store_restart(outage_s, budget_s, rides_it_out, clock):
    """Issue 21, section 2: exponential backoff with jitter within a total budget of wall time
    (tracking.retry_s, default enough for a 60 s outage), on a simulated clock where each try
    takes 2 s (a connection that times out): the tries count against the budget (issue 34)."""
    call_s = 2.0

    def store():
        clock.now += call_s
        if clock.now < outage_s:
            raise ConnectionRefusedError("connection refused")
        return "back"

    policy = tracking.RetryPolicy(budget_s=budget_s)
    if rides_it_out:
        assert tracking.retry(store, "during a restart", policy=policy) == "back"
    else:
        with pytest.raises(ConnectionRefusedError):
            tracking.retry(store, "during a restart", policy=policy)
        # The budget from the first failure, its tries included, then one last try: not more.
        assert budget_s + call_s <= clock.now <= budget_s + 2 * call_s
    assert clock.now - sum(clock.pauses) == pytest.approx(call_s * (len(clock.pauses) + 1))  # every try took its time
    assert pauses_back_off(clock.pauses, policy)


def pauses_back_off(pauses: list[float], policy: tracking.RetryPolicy) -> bool:
    return pauses[1] > pauses[0] and max(pauses) <= policy.max_delay_s and len(set(pauses)) == len(pauses)


def test_a_store_that_stays_down_costs_one_budget_of_wall_time_through_search_all(clock, monkeypatch):
    """Issue 34, section 5: a read through a retrying client, paged by runs.search_all, retried by
    one layer only, within tracking.retry_s of wall time, the calls' own time counted: before,
    search_all retried the retrying client's retries (1,826 s slept over 389 calls at 90 s)."""
    import sqlalchemy.exc

    from hw4 import runs

    monkeypatch.setattr(tracking.POLICY, "budget_s", 90.0)
    call_s, calls = 5.0, []

    class Down:
        tracking_uri = "postgresql://db/mlflow"
        search_runs = staticmethod(always_down(clock, call_s, calls))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        runs.search_all(tracking.RetryingClient(Down()), ["0"])
    assert 90 + call_s <= clock.now <= 90 + 2 * call_s  # the first try, the budget, the last try
    assert len(calls) == len(clock.pauses) + 1 <= 90 / call_s + 1  # one layer: one try per pause
    assert pauses_back_off(clock.pauses, tracking.POLICY)


def test_a_retry_inside_a_retry_is_a_plain_call(clock):
    """A retrying client's call made by a function that is itself retried: the outer loop alone
    retries, within its own budget."""
    import sqlalchemy.exc

    calls = []

    class Down:
        get_run = staticmethod(always_down(clock, 1.0, calls))

    client = tracking.RetryingClient(Down())
    policy = tracking.RetryPolicy(budget_s=30.0)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        tracking.retry(lambda: client.get_run("r"), "outer", policy=policy)
    assert len(calls) == len(clock.pauses) + 1 and clock.now <= 30 + 2 * 1.0  # first try, budget, last try
    assert tracking.retry(lambda: "the marker is cleared", "after") == "the marker is cleared"
    assert not getattr(tracking._in_retry, "active", False)


def test_every_call_of_a_retrying_client_is_retried_but_creating_a_run(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)

    class Store:
        def __init__(self):
            self.calls = {"get_run": 0, "create_run": 0}

        def get_run(self, run_id):  # a read
            self.calls["get_run"] += 1
            if self.calls["get_run"] < 3:
                raise locked()
            return run_id

        def create_run(self, experiment_id):
            self.calls["create_run"] += 1
            raise locked()

    store = Store()
    client = tracking.retrying(store)
    assert client.get_run("r") == "r" and store.calls["get_run"] == 3
    with pytest.raises(type(locked())):
        client.create_run("0")
    assert store.calls["create_run"] == 1  # tracking.create_run retries it safely, by its token


@pytest.mark.parametrize(
    "error",
    [
        lambda: __import__("mlflow").exceptions.MlflowException("no run", error_code="RESOURCE_DOES_NOT_EXIST"),
        lambda: __import__("mlflow").exceptions.MlflowException("bad value", error_code="INVALID_PARAMETER_VALUE"),
        lambda: PermissionError("artifacts folder is read-only"),
        lambda: RuntimeError("a bug"),
    ],
)
def test_permanent_errors_are_not_retried(monkeypatch, error):
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: pytest.fail("slept before a permanent error"))
    calls = []

    def broken():
        calls.append(1)
        raise error()

    with pytest.raises(type(error())):
        tracking.retry(broken, "broken")
    assert len(calls) == 1


class LostAnswer:
    """A client whose first create_run reaches the store but whose answer is lost (a timeout)."""

    def __init__(self, client):
        self.client, self.lost = client, False

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_run(self, *args, **kwargs):
        run = self.client.create_run(*args, **kwargs)
        if not self.lost:
            self.lost = True
            raise __import__("requests").Timeout("read timed out")
        return run


def test_creating_a_run_is_safe_to_retry(tracking_uri, monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "exp", None)
    run = tracking.create_run(LostAnswer(client), experiment_id, "once", {"a": 1})
    (only,) = client.search_runs([experiment_id])  # one run, not two
    assert only.info.run_id == run.info.run_id and only.data.tags["a"] == "1"

    # A metric write repeated after a lost answer (the same point, timestamp included) is stored once.
    entries = [tracking.Metric("loss", 0.5, 1000, 0)]
    client.log_batch(run.info.run_id, metrics=entries)
    client.log_batch(run.info.run_id, metrics=entries)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1


@pytest.fixture
def basic_auth_server():
    """A stand-in tracking server that answers only requests with user:secret (HTTP basic auth)."""
    import base64
    import json as json_
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    expected = "Basic " + base64.b64encode(b"user:secret").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                self.end_headers()
                return
            body = b"OK" if self.path == "/health" else json_.dumps({"experiments": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_server_check_uses_mlflows_credentials(basic_auth_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(TrackingError, match="refused the request .401.: set MLFLOW_TRACKING_USERNAME"):
        tracking.connect(basic_auth_server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    assert tracking.connect(basic_auth_server).tracking_uri == basic_auth_server


class RacedDataset:
    """A client whose first log_inputs loses the race to insert the dataset, as a parallel job's can."""

    def __init__(self, client):
        self.client, self.raced = client, False

    def __getattr__(self, name):
        return getattr(self.client, name)

    def log_inputs(self, *args, **kwargs):
        if not self.raced:
            self.raced = True
            from mlflow.exceptions import MlflowException

            raise MlflowException(
                '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',
                error_code="BAD_REQUEST",
            )
        return self.client.log_inputs(*args, **kwargs)


def test_a_dataset_logged_by_parallel_jobs_at_once_is_linked_to_both(tracking_uri):
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, "exp", None)
    first, second = (tracking.create_run(client, experiment_id, name, {}) for name in ("a", "b"))
    tracking.RunLogger(client, first.info.run_id).log_dataset("fashion_mnist", "d1", "/data", {"n": 1})
    tracking.RunLogger(RacedDataset(client), second.info.run_id).log_dataset("fashion_mnist", "d1", "/data", {"n": 1})
    for run in (first, second):
        (dataset,) = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert (dataset.dataset.name, dataset.dataset.digest) == ("fashion_mnist", "d1")


# Issue 34, section 2: passwords as the parsers that open the stores read them.
TRICKY_PASSWORDS = ["ab/cd", "a:b:c", "a?b=c", "a#b", "p%40ss", "s3cr/et:Pw?x#y"]


@pytest.mark.parametrize("password", TRICKY_PASSWORDS)
def test_a_database_password_is_masked_as_sqlalchemy_reads_it(password):
    from sqlalchemy.engine import make_url

    uri = f"postgresql+psycopg://alice:{password}@db.example:5432/mlflow"
    read = make_url(uri)
    masked = tracking.redact(uri)
    assert password not in masked and read.password not in masked
    again = make_url(masked)
    assert again.password == tracking.MASK
    assert (again.username, again.host, again.port, again.database) == (
        read.username,
        read.host,
        read.port,
        read.database,
    )


@pytest.mark.parametrize("password", [*TRICKY_PASSWORDS, "p@ss"])
def test_a_server_password_or_token_is_masked_as_urllib_reads_it(password):
    from urllib.parse import quote, urlsplit

    uri = f"https://alice:{quote(password, safe='')}@mlflow.example:8443/prefix?x=1"
    token = f"https://{quote(password, safe='')}@mlflow.example/prefix"
    for given, kept_user in ((uri, "alice"), (token, tracking.MASK)):
        masked = tracking.redact(given)
        assert (urlsplit(given).password or urlsplit(given).username) not in masked
        read, again = urlsplit(given), urlsplit(masked)
        assert again.username == kept_user and (again.hostname, again.port, again.path) == (
            read.hostname, read.port, read.path,
        )  # fmt: skip


def test_every_uri_of_a_line_is_masked_and_the_words_around_them_kept():
    secrets = ["pw/1:x", "tok2", "pw3?y"]
    line = (
        f"stores: postgresql://alice:{secrets[0]}@db/x, https://{secrets[1]}@git.example/r.git "
        f"and mysql://bob:{secrets[2]}@h:3306/db; mail carol@example.com or see http://127.0.0.1:5000/#/x"
    )
    masked = tracking.redact(line)
    assert not [s for s in secrets if s in masked]
    for kept in ("stores: postgresql://alice:", "@db/x, https://", "@git.example/r.git and mysql://bob:",
                 "@h:3306/db; mail carol@example.com or see http://127.0.0.1:5000/#/x"):  # fmt: skip
        assert kept in masked


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:////tmp/mlruns/mlflow.db",
        "sqlite:///runs@home/mlflow.db",
        "file:///tmp/a@b/artifacts",
        "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning",
        "postgresql://db.example:5432/mlflow",
        "https://github.com/org/repo@v1.0 and https://medium.com/@someone",
        "write to alice@example.com",
        "see http://127.0.0.1:5000 or ask bob@example.com",
    ],
)
def test_text_without_credentials_is_unchanged(text):
    assert tracking.redact(text) == text


def test_a_raw_at_sign_in_a_password_is_masked_as_either_parser_reads_it():
    """urllib reads the password up to the authority's last `@` (p@ss), SQLAlchemy up to its first."""
    from urllib.parse import urlsplit

    masked = tracking.redact("postgresql://alice:p@ss@db.example/mlflow")
    assert urlsplit("postgresql://alice:p@ss@db.example/mlflow").password == "p@ss"
    assert "p@" not in masked and "ss@" not in masked and masked.endswith("@db.example/mlflow")


def test_an_e_mail_after_a_uri_with_a_password_is_not_eaten():
    masked = tracking.redact("store http://u:pw@h:5000 owner bob@example.com")
    assert "pw" not in masked and masked.endswith(":5000 owner bob@example.com")


def test_redacting_twice_changes_nothing_more():
    """A sweep's context holds its store redacted, and a job compares it with its own, redacted."""
    for text in ("postgresql://alice:ab/cd@db/x", "https://tok@h/x?token=t", "http://u@v:pw@h"):
        once = tracking.redact(text)
        assert tracking.redact(once) == once


def test_nested_params_and_lists_are_redacted():
    tree = {"sweeper": {"storage": "postgresql://a:p/w@db/optuna", "params": {"x": ["mysql://b:q@h/db", 1]}}, "n": 2}
    flat = str(tracking.redact_params(tree))
    assert "p/w" not in flat and ":q@" not in flat and "'n': 2" in flat


def test_log_lines_are_redacted_hydras_escaped_overrides_too(caplog):
    """Hydra's launcher logs each job's overrides, escaped (`http\\://alice\\:pw@...`)."""
    import logging

    from hydra._internal.grammar.utils import escape_special_characters

    override = "tracking.uri=" + escape_special_characters("http://alice:s3cr%2Fet@127.0.0.1:5000")
    with caplog.at_level(logging.INFO):
        logging.getLogger("hydra.launcher.test").info(f"\t#0 : {override} optimizer.lr=0.1")
        logging.getLogger("mlflow.test").warning("request to %s failed", "http://bob:pw2@h:5000/api")
    assert "s3cr" not in caplog.text and "pw2" not in caplog.text
    assert "127.0.0.1" in caplog.text and "optimizer.lr=0.1" in caplog.text


def test_mlflow_prints_no_run_link_of_its_own():
    """MLflow's "View run ... at: <URI>" lines carry the URI's password: hw4 turns them off
    through MLflow's own switch (and prints where_to_see instead)."""
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True


def test_each_client_retries_within_its_own_configs_budget(clock, tracking_uri, tmp_path):
    """Issue 36: tracking.retry_s is passed to the client a run opens (no process-wide setting):
    two clients of one process, from configs with other budgets, each give up at their own, and
    the default policy is left as it was."""
    import sqlalchemy.exc
    from omegaconf import OmegaConf

    from hw4 import runs

    default_budget = tracking.POLICY.budget_s
    budgets, ended_at = (4.0, 30.0), []
    for budget in budgets:
        settings = OmegaConf.create(
            {"uri": tracking_uri, "experiment": "hw4", "artifact_root": str(tmp_path / "a"), "retry_s": budget}
        )
        client, _ = tracking.open_experiment(settings, tmp_path)
        start, calls = clock.now, []
        client.raw.search_runs = always_down(clock, 1.0, calls)  # the store goes down after the check
        with pytest.raises(sqlalchemy.exc.OperationalError):
            runs.search_all(client, ["0"])
        ended_at.append(clock.now - start)
        assert tracking.RunLogger(client, "r").client is client  # a run's writes keep the same budget
    for budget, took in zip(budgets, ended_at):
        assert budget + 1.0 <= took <= budget + 2.0  # the first try, the budget, the last try
    assert tracking.POLICY.budget_s == default_budget


def test_a_store_of_another_mlflow_schema_is_opened_after_a_short_pause_not_waited_on(_migrated_store, tmp_path):
    """A sqlite store whose schema is not this MLflow's and does not change is not being made:
    hw4 stops waiting after SCHEMA_SETTLED_S (MLflow then upgrades or refuses it); a file it
    cannot read at all at once (MLflow says why)."""
    db = tmp_path / "older.db"
    shutil.copy(_migrated_store, db)
    with contextlib.closing(sqlite3.connect(db)) as older:
        older.execute("UPDATE alembic_version SET version_num = 'an-older-one'")
        older.commit()
    started = time.monotonic()
    tracking.wait_while_made_elsewhere(str(db))
    assert tracking.SCHEMA_SETTLED_S <= time.monotonic() - started < tracking.SCHEMA_SETTLED_S + 3
    (tmp_path / "a-folder.db").mkdir()
    started = time.monotonic()
    tracking.wait_while_made_elsewhere(str(tmp_path / "a-folder.db"))
    assert time.monotonic() - started < 1
