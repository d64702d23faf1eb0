"""Optional: record a run's dataset version as an MLflow input, when mlflow is installed and configured.

Strandline does not depend on MLflow; with ``[retrain] mlflow_tracking_uri`` set and a command
that reports its ``mlflow_run_id``, the dataset version (name, version id as digest, version
number) is logged on that MLflow run with the context ``training``. Failures are logged, never
fatal: the run itself already succeeded.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def log_dataset_input(tracking_uri: str, mlflow_run_id: str, run: Any) -> bool:
    """Log ``run``'s dataset version on MLflow run ``mlflow_run_id``; False when it could not."""
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Dataset, DatasetInput, InputTag
    except ImportError:
        log.info("mlflow_tracking_uri is set but mlflow is not installed: run %s not logged to MLflow", run.run_id)
        return False
    source = json.dumps({"dataset": run.dataset, "version": run.version, "version_id": run.version_id})
    dataset = Dataset(name=run.dataset, digest=run.version_id[:36], source_type="strandline", source=source)
    try:
        MlflowClient(tracking_uri=tracking_uri).log_inputs(
            mlflow_run_id, [DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value="training")])]
        )
    except Exception as exc:  # MLflow's own errors vary by version and store
        log.warning("cannot log run %s's dataset to MLflow run %s: %s", run.run_id, mlflow_run_id, exc)
        return False
    return True
