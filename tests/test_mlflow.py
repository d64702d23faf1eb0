"""MLflow lineage (issue #4) against a real MLflow tracking store in a temporary folder.

The store is MLflow's file store: ``mlflow-skinny`` has no SQL store dependencies, and MLflow 3
refuses the file store unless ``MLFLOW_ALLOW_FILE_STORE`` opts in.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from consumers.mlflow_lineage import log_dataset_input
from consumers.retrain_service import RunRow

VERSION_ID = "5f0c3a9e1b7d4c2a8e6f0b1d3c5a7e9f"  # an XXH3-128 hex digest, as Strandline's version ids are


def _run(**changes: Any) -> RunRow:
    fields: dict[str, Any] = {
        "run_id": "r-1",
        "policy": 0,
        "dataset": "sales",
        "version": 7,
        "version_id": VERSION_ID,
        "trigger": "new_version",
        "action": "command",
        "coalesced": 0,
        "rows": 100,
        "started_at": 1.0,
        "finished_at": None,
        "status": None,
        "exit_code": None,
        "http_status": None,
        "reason": None,
        "model_path": "model.pkl",
        "model_hash": None,
    }
    return RunRow(**(fields | changes))


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def _finished_mlflow_run(tracking_uri: str) -> str:
    """A run as a training command leaves it: created, then ended before the command exits."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(client.create_experiment("churn"))
    run_id: str = run.info.run_id
    client.set_terminated(run_id)
    return run_id


def test_dataset_version_is_logged_as_a_training_input_of_the_mlflow_run(
    tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    mlflow_run_id = _finished_mlflow_run(tracking_uri)
    caplog.set_level(logging.INFO, logger="consumers.mlflow_lineage")

    assert log_dataset_input(tracking_uri, mlflow_run_id, _run()) is True

    logged = MlflowClient(tracking_uri=tracking_uri).get_run(mlflow_run_id).inputs
    assert logged is not None
    inputs = logged.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "sales"
    assert dataset.digest == VERSION_ID[:36]
    assert dataset.source_type == "strandline"
    assert json.loads(dataset.source) == {"dataset": "sales", "version": 7, "version_id": VERSION_ID}
    assert {(tag.key, tag.value) for tag in inputs[0].tags} == {("mlflow.data.context", "training")}
    assert "sales@7 logged as an input of MLflow run" in caplog.text


def test_logging_the_same_version_twice_keeps_one_input(tracking_uri: str) -> None:
    from mlflow import MlflowClient

    mlflow_run_id = _finished_mlflow_run(tracking_uri)

    assert log_dataset_input(tracking_uri, mlflow_run_id, _run())
    assert log_dataset_input(tracking_uri, mlflow_run_id, _run(run_id="r-2"))

    logged = MlflowClient(tracking_uri=tracking_uri).get_run(mlflow_run_id).inputs
    assert logged is not None
    assert len(logged.dataset_inputs) == 1


def test_an_unknown_mlflow_run_is_a_warning_not_an_error(tracking_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    _finished_mlflow_run(tracking_uri)  # the store exists, the run id does not

    assert log_dataset_input(tracking_uri, "0" * 32, _run()) is False

    assert [r.levelno for r in caplog.records if r.name == "consumers.mlflow_lineage"] == [logging.WARNING]
    assert "cannot log run r-1's dataset to MLflow run" in caplog.text


def test_credentials_in_the_tracking_uri_never_reach_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mlflow")
    # MLflow's own HTTP retries would take minutes against a closed port.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

    assert log_dataset_input("http://ci:s3cr3t-token@127.0.0.1:1", "0" * 32, _run()) is False

    assert "s3cr3t-token" not in caplog.text
    assert "cannot log run r-1's dataset" in caplog.text


def test_without_mlflow_nothing_is_logged_and_one_info_line_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # ``import mlflow`` now raises ImportError
    caplog.set_level(logging.DEBUG, logger="consumers.mlflow_lineage")

    assert log_dataset_input("http://mlflow.invalid", "abc", _run()) is False

    records = [r for r in caplog.records if r.name == "consumers.mlflow_lineage"]
    assert [r.levelno for r in records] == [logging.INFO]
    assert "mlflow is not installed" in records[0].getMessage()
