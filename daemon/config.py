"""Reading the configuration: the TOML file, ``STRANDLINE_*`` overrides, and auto-discovered datasets."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from pydantic import ValidationError

from daemon.errors import ConfigError
from daemon.objectstore import parse_root
from schemas.config import DATASET_NAME_PATTERN, DatasetConfig, StrandlineConfig, is_bucket_url

DEFAULT_STATE_DIR = ".strandline"


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        allowed = ""
        ctx = err.get("ctx") or {}
        if "pattern" in ctx:
            allowed = f" (allowed: matching {ctx['pattern']})"
        elif "expected" in ctx:
            allowed = f" (allowed: {ctx['expected']})"
        lines.append(f"  {key}: {err['msg']}{allowed}")
    lines.append("See `strandline watch --help` and the README's configuration section.")
    return "\n".join(lines)


_KAFKA_FILES = (
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "sasl_password_file",
    "sasl_oauth_token_file",
    "oauth_client_secret_file",
)


def load_config(path: Path | None) -> StrandlineConfig:
    """The configuration from ``path`` (optional) with environment overrides applied."""
    data: dict[str, object] = {}
    source = "environment (STRANDLINE_*)"
    if path is not None:
        source = str(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found: check the --config path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        base = path.parent.resolve()
        # Relative paths in the file are relative to the file, not to wherever the daemon started.
        if isinstance(data.get("state_dir"), str):
            data["state_dir"] = str(base / str(data["state_dir"]))
        datasets = data.get("datasets")
        if isinstance(datasets, list):
            for ds in datasets:
                for key in ("root", "suite"):
                    if isinstance(ds, dict) and isinstance(ds.get(key), str) and not is_bucket_url(ds[key]):
                        ds[key] = str(base / ds[key])
        kafka = data.get("kafka")
        if isinstance(kafka, dict):
            for key in _KAFKA_FILES:
                if isinstance(kafka.get(key), str):
                    kafka[key] = str(base / kafka[key])
        store = data.get("store")
        if isinstance(store, dict) and isinstance(store.get("path"), str) and not is_bucket_url(store["path"]):
            store["path"] = str(base / store["path"])
        consumers = data.get("consumers")
        if isinstance(consumers, dict) and isinstance(consumers.get("state_dir"), str):
            consumers["state_dir"] = str(base / consumers["state_dir"])
        retrain = data.get("retrain")
        policies = retrain.get("policies") if isinstance(retrain, dict) else None
        for policy in policies if isinstance(policies, list) else []:
            action = policy.get("action") if isinstance(policy, dict) else None
            if isinstance(action, dict) and isinstance(action.get("cwd"), str):
                action["cwd"] = str(base / action["cwd"])
        data.setdefault("state_dir", str(base / DEFAULT_STATE_DIR))
    try:
        config = StrandlineConfig(**data)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    for ds in config.datasets:
        if ds.is_bucket:
            parse_root(ds.root)  # an unknown scheme or a bad bucket name fails here, not at first poll
    if config.store.path is not None and is_bucket_url(config.store.path):
        try:
            parse_root(config.store.path)
        except ConfigError as exc:
            raise ConfigError(f"[store] path: {exc}") from exc
    return config


def state_dir(config: StrandlineConfig) -> Path:
    return (config.state_dir or Path(DEFAULT_STATE_DIR)).resolve()


def catalog_path(config: StrandlineConfig) -> Path:
    return state_dir(config) / "catalog.sqlite"


def store_location(config: StrandlineConfig) -> str:
    """Where the content store is: a bucket URL (``[store] path = "s3://..."``), else its absolute folder."""
    path = config.store.path
    if path is not None and is_bucket_url(path):
        return path
    return str(store_path(config))


def store_path(config: StrandlineConfig) -> Path:
    """The content store's local folder: ``[store] path``, else ``store/`` in the state folder.

    A bucket store has no folder of its own: ``ConfigError`` (use ``store_location``).
    """
    path = config.store.path
    if path is not None and is_bucket_url(path):
        raise ConfigError(f"the content store is in a bucket ({path}), not in a local folder")
    return (Path(path) if path is not None else state_dir(config) / "store").resolve()


_SAFE = re.compile(DATASET_NAME_PATTERN)


def discover_datasets(root: Path) -> list[DatasetConfig]:
    """Datasets of a folder with no config: one per immediate subfolder, plus its loose files."""
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: give the folder to watch, or a config with [[datasets]]")
    found = [DatasetConfig(name=root.name if _SAFE.match(root.name) else "root", root=root, recursive=False)]
    with os.scandir(root) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name.startswith("_"):
                continue
            if entry.is_dir(follow_symlinks=False) and _SAFE.match(entry.name):
                found.append(DatasetConfig(name=entry.name, root=Path(entry.path)))
    names = [d.name for d in found]
    if len(set(names)) != len(names):  # a subfolder named like the root itself
        found[0] = found[0].model_copy(update={"name": f"{found[0].name}-root"})
    return found
