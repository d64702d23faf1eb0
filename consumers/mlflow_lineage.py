"""Optional: record a run's dataset version as an MLflow input, when mlflow is installed and configured.

Strandline does not depend on MLflow (issue #4); with ``[retrain] mlflow_tracking_uri`` set and a
command that reports its ``mlflow_run_id``, the dataset version is logged on that MLflow run as a
dataset input with the context ``training``: name = the Strandline dataset, digest = the version id,
source type ``strandline`` and, as source, the JSON ``{"dataset", "version", "version_id"}``.
``mlflow-skinny`` is enough. Failures are logged, never fatal: the run itself already succeeded.

The tracking URI may carry credentials (``https://user:token@host``) and MLflow puts it in its
error messages, so it is never logged and user info is cut from every message we pass on.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

# What MLflow accepts (mlflow/utils/validation.py, checked by its SQL store and so by the server).
_MAX_NAME = 500
_MAX_DIGEST = 36
_CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def log_dataset_input(tracking_uri: str, mlflow_run_id: str, run: Any) -> bool:
    """Log ``run``'s dataset version on MLflow run ``mlflow_run_id``; False when it could not.

    ``run`` is a retrain run record (``dataset``, ``version``, ``version_id``, ``run_id``). The
    MLflow run may already be finished, as it is when the training command ended it; logging the
    same version on the same run twice is harmless (MLflow keeps one input).
    """
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Dataset, DatasetInput, InputTag
    except ImportError:
        log.info("mlflow_tracking_uri is set but mlflow is not installed: run %s not logged to MLflow", run.run_id)
        return False
    except Exception as exc:  # a broken install (e.g. a protobuf clash) must not stop the consumer
        log.warning("cannot import mlflow: run %s not logged to MLflow: %s", run.run_id, _safe(exc, tracking_uri))
        return False
    source = json.dumps({"dataset": run.dataset, "version": run.version, "version_id": run.version_id})
    try:
        dataset = Dataset(
            name=run.dataset[:_MAX_NAME], digest=run.version_id[:_MAX_DIGEST], source_type="strandline", source=source
        )
        tags = [InputTag(key=_CONTEXT_TAG, value="training")]
        MlflowClient(tracking_uri=tracking_uri).log_inputs(mlflow_run_id, datasets=[DatasetInput(dataset, tags)])
    except Exception as exc:  # MLflow's own errors vary by version and store
        log.warning(
            "cannot log run %s's dataset to MLflow run %s: %s", run.run_id, mlflow_run_id, _safe(exc, tracking_uri)
        )
        return False
    log.info("run %s: %s@%d logged as an input of MLflow run %s", run.run_id, run.dataset, run.version, mlflow_run_id)
    return True


def _safe(exc: Exception, tracking_uri: str) -> str:
    """``exc`` as one line without the tracking URI or any ``user:password@`` in it."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if tracking_uri:
        text = text.replace(tracking_uri, "<tracking uri>")
    return _USERINFO.sub("***@", text)
