"""Opening the content store a config names: a local folder, or a bucket prefix (issue 6).

``store_site(config)`` says where the store is and where its lock lives; ``open_store`` opens it
with the right backend: ``LocalBackend`` for a folder, ``daemon.store_bucket.BucketBackend``
for ``[store] path = "s3://..."`` (or ``gs://``, ``az://``), reached with the same [s3], [gcs] or
[azure] settings and credentials as bucket datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import state_dir, store_location
from daemon.content_store import ContentStore, StoreError
from daemon.errors import ConfigError
from daemon.objectstore import BucketRoot, filesystem_for, parse_root
from schemas.config import StoreSettings, StrandlineConfig, is_bucket_url

__all__ = ["StoreSite", "open_store", "store_site"]


@dataclass(frozen=True, slots=True)
class StoreSite:
    """Where a content store is (``location``: a folder or a bucket URL) and where its ``StoreLock`` file goes.

    ``lock_dir`` is the store folder itself, or this host's spool folder of a bucket store: the
    lock is a local flock either way, so it orders processes of this host only.
    """

    location: str
    lock_dir: Path
    bucket: BucketRoot | None = None
    settings: StoreSettings | None = None
    # The store ``shared()`` opened, for every dataset of a daemon that holds this site.
    _opened: list[ContentStore] = field(default_factory=list, compare=False, repr=False)

    @property
    def is_bucket(self) -> bool:
        return self.bucket is not None

    def shared(self) -> ContentStore:
        """The store, opened once for all who ask this site: one index connection, one pack being written.

        Each dataset opening its own cost a SQLite connection (and its page cache) per dataset:
        18 MiB more idle RSS with 10 datasets (bench/idle.py).
        """
        if not self._opened:
            self._opened.append(self.open())
        return self._opened[0]

    def open(self, **options: Any) -> ContentStore:
        """The store, opened (a bucket store lists its packs); ``options`` are ``ContentStore``'s."""
        if self.bucket is None:
            return ContentStore(self.location, **options)
        from daemon.store_bucket import BucketBackend

        assert self.settings is not None  # set with bucket by store_site
        try:
            fs = filesystem_for(self.bucket, self.settings)
        except ConfigError as exc:
            raise StoreError(f"cannot set up the client of the content store {self.bucket.url}: {exc}") from exc
        return ContentStore(BucketBackend(self.bucket, fs, self.lock_dir), **options)


def store_site(config: StrandlineConfig) -> StoreSite:
    """Where the config's content store is: ``[store] path``, else ``store/`` in the state folder."""
    location = store_location(config)
    if not is_bucket_url(location):
        return StoreSite(location, Path(location))
    from daemon.store_bucket import spool_dir

    bucket = parse_root(location)
    return StoreSite(location, spool_dir(state_dir(config), bucket), bucket, config.store_settings(location))


def open_store(config: StrandlineConfig, **options: Any) -> ContentStore:
    """The config's content store, opened; ``StoreError`` when it cannot be (a bucket unreachable, say)."""
    return store_site(config).open(**options)
