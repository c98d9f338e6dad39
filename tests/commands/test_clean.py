"""hw4-clean: checkpoints go once no run will resume them; resumable and live ones stay."""

from __future__ import annotations

import console
from mlflow.tracking import MlflowClient

from hw4 import names, tracking
from hw4.commands import clean
from hw4.runtime import locks


def make_runs(uri: str, root):
    """One run per case, each with a checkpoint folder under `root`; returns {case: run id}."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("hw4")
    ids = {}
    for case in ("finished", "failed", "killed", "dead_running", "live_running", "deleted", "superseded"):
        ids[case] = tracking.create_run(client, experiment_id, case, {}).info.run_id
        (root / ids[case]).mkdir(parents=True)
        (root / ids[case] / "model.keras").write_bytes(b"x" * 1000)
    for case, status in {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED", "deleted": "FAILED",
                         "superseded": "FAILED"}.items():  # fmt: skip
        client.set_terminated(ids[case], status)
    client.delete_run(ids["deleted"])
    client.set_tag(ids["superseded"], names.SUPERSEDED_BY, ids["finished"])
    locks.lock_path(root, ids["dead_running"]).write_text("pid 1 on a machine")  # its process died
    (root / "0123456789abcdef").mkdir()  # not a run of this store
    return client, ids


def remaining(root) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir()}


def test_clean_keeps_resumable_and_live_checkpoints_unless_asked(tracking_uri, tmp_path):
    root = tmp_path / "checkpoints"
    client, ids = make_runs(tracking_uri, root)
    with locks.RunLock(locks.lock_path(root, ids["live_running"]), ids["live_running"]):
        listed = clean.clean(client, root, dry_run=True)
        assert len(listed) == 8 and remaining(root) == set(ids.values()) | {"0123456789abcdef"}  # nothing deleted

        clean.clean(client, root)
        keep = {ids["killed"], ids["dead_running"], ids["live_running"], "0123456789abcdef"}
        assert remaining(root) == keep

        clean.clean(client, root, killed=True)
        assert remaining(root) == {ids["live_running"], "0123456789abcdef"}  # a live run and a stranger stay
        assert not locks.lock_path(root, ids["dead_running"]).exists()  # its stale lock went with it
    verdicts = {c.run_id: c.why for c in listed}
    assert verdicts[ids["superseded"]].startswith("FAILED, superseded by run")
    assert "resumable (killed=true deletes it)" in verdicts[ids["killed"]]


def test_hw4_clean_lists_before_it_deletes(tracking_uri, tmp_path):
    root = tmp_path / "mlruns" / "checkpoints"
    _, ids = make_runs(tracking_uri, root)
    args = [f"tracking.uri={tracking_uri}"]  # the command in this process (tests/console.py)
    preview = console.run(clean.main, "hw4-clean", *args, "dry_run=true", cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert f"would delete  {ids['failed']}" in preview.stdout and (root / ids["failed"]).exists()
    assert "4 of 8 checkpoints, 0.0 MB: would delete" in preview.stdout
    done = console.run(clean.main, "hw4-clean", *args, cwd=tmp_path)
    assert done.returncode == 0 and f"deleted  {ids['failed']}" in done.stdout
    assert not (root / ids["failed"]).exists() and (root / ids["killed"]).exists()
