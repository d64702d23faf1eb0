"""The Azure adapter of ``daemon.objectstore``: Azure Blob Storage (and Azurite) through adlfs.

adlfs gives the credentials (a connection string, an account key, a SAS token, or
DefaultAzureCredential) and its asynchronous azure-storage-blob ``BlobServiceClient``; the three
calls are made on that client:

- a listing page is one ``list_blobs`` page (``results_per_page`` at most 5,000), the cursor its
  continuation token; blobs whose blocks are not committed yet are not listed;
- a HEAD is ``get_blob_properties``;
- a read is a sequence of ranged downloads of at least 4 MiB, each conditional on the listed ETag
  (``If-Match``), so an overwritten blob fails as "changed" instead of mixing versions, and memory
  holds one range, never the blob.

The SDK's default retry policy waits 15 s and more between tries; requests are retried here
instead (``[azure] max_attempts`` tries on throttling, 5xx answers and dropped connections, short
jittered pauses), with ``[azure]`` connect and read timeouts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from daemon.errors import ConfigError
from daemon.objectstore import (
    TUNING_ATTR,
    BucketRoot,
    ListingPage,
    RangedReader,
    StoreResponseError,
    Tuning,
    check_endpoint_url,
    classify_failure,
    describe_endpoint,
    failure_error,
    quiet_sdk_logs,
    same_etag,
    tuning_of,
    with_retries,
)
from schemas.config import AzureConfig

__all__ = ["AzureStore", "make_azure_filesystem"]

MIN_RANGE: Final = 4 * 1024 * 1024  # the SDK's own chunk size: fewer, larger ranged GETs


def _connection_string(settings: AzureConfig, endpoint: str) -> str:
    """A connection string for a blob endpoint given by URL (Azurite, a private endpoint over http)."""
    parts = [f"BlobEndpoint={endpoint}"]
    if settings.account_name:
        parts.append(f"AccountName={settings.account_name}")
    if settings.account_key is not None:
        parts.append(f"AccountKey={settings.account_key.get_secret_value()}")
    elif settings.sas_token is not None:
        parts.append(f"SharedAccessSignature={settings.sas_token.get_secret_value().lstrip('?')}")
    elif not settings.anonymous:
        raise ConfigError(
            "[azure] endpoint_url needs account_name with account_key or sas_token, or anonymous = true "
            "(DefaultAzureCredential works with account_name and the public endpoint)"
        )
    return ";".join(parts) + ";"


def make_azure_filesystem(root: BucketRoot, settings: AzureConfig) -> Any:
    """An ``adlfs.AzureBlobFileSystem`` for ``root``; it connects on first use.

    ``connection_string`` wins; else ``endpoint_url`` with ``account_key`` or ``sas_token``; else
    ``account_name`` with a key, a SAS token, anonymous access or DefaultAzureCredential; with none
    of these adlfs reads AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_ACCOUNT_NAME (and _KEY).
    """
    options: dict[str, Any] = {
        "anon": settings.anonymous,
        # One filesystem per call and no listing cache: a poll must see the store as it is now.
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }
    if settings.connection_string is not None:
        options["connection_string"] = settings.connection_string.get_secret_value()
    elif settings.endpoint_url is not None:
        endpoint = settings.endpoint_url.rstrip("/")
        check_endpoint_url(endpoint)
        options["connection_string"] = _connection_string(settings, endpoint)
    elif settings.account_name is not None:
        options["account_name"] = settings.account_name
        if settings.account_key is not None:
            options["account_key"] = settings.account_key.get_secret_value()
        if settings.sas_token is not None:
            options["sas_token"] = settings.sas_token.get_secret_value()
    quiet_sdk_logs()
    import adlfs  # imported late: azure-storage-blob costs ~0.3 s

    try:
        fs = adlfs.AzureBlobFileSystem(**options)
    except Exception as exc:
        # The message of a bad connection string may quote it: never show it.
        if "Must provide either a connection_string or account_name" in str(exc):
            raise failure_error(
                StoreResponseError("no_credentials", "", "no account or connection string"),
                root,
                "Azure Blob Storage",
                "list",
            ) from exc
        raise ConfigError(
            f"cannot set up the Azure client for {root.url} ({type(exc).__name__}): check [azure] "
            "connection_string, account_name and endpoint_url"
        ) from exc
    setattr(
        fs,
        TUNING_ATTR,
        Tuning(settings.max_attempts, settings.connect_timeout_seconds, settings.read_timeout_seconds),
    )
    return fs


def _quoted(etag: str) -> str:
    """An ETag as If-Match wants it: quoted (listings give it bare, HEAD quoted)."""
    bare = etag.removeprefix("W/").strip('"')
    return f'"{bare}"'


def _contents(blob: Any) -> dict[str, Any]:
    return {
        "Key": str(blob.name),
        "Size": int(blob.size or 0),
        "ETag": str(blob.etag or ""),
        "LastModified": blob.last_modified,
    }


def _blob_size(props: Any, fallback: int) -> int:
    """The whole blob's size from a ranged download's ``Content-Range: bytes 0-99/1234``
    (``props.size`` is the size of the range); ``fallback`` when the answer was not ranged."""
    content_range = str(getattr(props, "content_range", None) or "")
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else fallback


class AzureStore:
    """``StoreAdapter`` over an ``adlfs.AzureBlobFileSystem``."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self._tuning = tuning_of(fs)

    @property
    def endpoint(self) -> str:
        return describe_endpoint(str(self.fs.service_client.url))  # the query (a SAS token) is dropped

    def _options(self) -> dict[str, Any]:
        """Per-request options: no SDK retries (``with_retries`` does them), our timeouts."""
        return {
            "retry_total": 0,
            "connection_timeout": self._tuning.connect_timeout,
            "read_timeout": self._tuning.read_timeout,
        }

    def _sync(self, make: Callable[[], Any]) -> Any:
        from fsspec.asyn import sync  # type: ignore[import-untyped]

        return sync(self.fs.loop, make)

    def list_page(
        self, root: BucketRoot, *, page_size: int, cursor: str | None, start_after: str | None
    ) -> ListingPage:
        container = self.fs.service_client.get_container_client(root.bucket)

        async def page() -> ListingPage:
            pages = container.list_blobs(
                name_starts_with=root.prefix or None, results_per_page=page_size, **self._options()
            ).by_page(continuation_token=cursor)
            try:
                blobs = await pages.__anext__()
            except StopAsyncIteration:
                return [], None
            items: list[Mapping[str, Any]] = [_contents(blob) async for blob in blobs]
            return items, (str(pages.continuation_token) if pages.continuation_token else None)

        items, token = self._sync(lambda: with_retries(page, self._tuning.max_attempts))
        if start_after:  # no server-side "start after" in this API: skip up to it
            items = [item for item in items if item["Key"] > start_after]
        return items, token

    async def _properties(self, root: BucketRoot, key: str) -> dict[str, Any] | None:
        blob = self.fs.service_client.get_blob_client(root.bucket, key)
        try:
            props = await with_retries(lambda: blob.get_blob_properties(**self._options()), self._tuning.max_attempts)
        except Exception as exc:
            # A missing container is the root's problem, not a vanished blob.
            if classify_failure(exc)[0] == "vanished" and getattr(exc, "error_code", None) != "ContainerNotFound":
                return None
            raise
        return {
            "Key": key,
            "Size": int(props.size or 0),
            "ETag": str(props.etag or ""),
            "LastModified": props.last_modified,
        }

    def head(self, root: BucketRoot, key: str) -> Mapping[str, Any] | None:
        return self._sync(lambda: self._properties(root, key))  # type: ignore[no-any-return]

    async def _range(self, root: BucketRoot, key: str, etag: str | None, start: int, length: int) -> tuple[bytes, Any]:
        """``length`` bytes from ``start`` (conditional on ``etag``) and the blob's properties."""
        from azure.core import MatchConditions

        blob = self.fs.service_client.get_blob_client(root.bucket, key)
        condition: dict[str, Any] = {}
        if etag:
            condition = {"etag": _quoted(etag), "match_condition": MatchConditions.IfNotModified}

        async def once() -> tuple[bytes, Any]:
            try:
                download = await blob.download_blob(
                    offset=start, length=length, max_concurrency=1, **condition, **self._options()
                )
            except Exception as exc:
                code = getattr(getattr(exc, "error_code", None), "value", None)
                if start != 0 or code != "InvalidRange":
                    raise
                # An empty blob has no byte 0: ask for the whole (empty) blob, still conditionally.
                download = await blob.download_blob(max_concurrency=1, **condition, **self._options())
            return bytes(await download.readall()), download.properties

        try:
            return await with_retries(once, self._tuning.max_attempts)
        except Exception as exc:
            # If-Match on a deleted blob: Azurite answers 412 like an overwrite. Say which it was.
            if etag and classify_failure(exc)[0] == "changed" and await self._properties(root, key) is None:
                raise StoreResponseError("vanished", "BlobNotFound", "no such blob") from exc
            raise

    def stream(
        self, root: BucketRoot, key: str, *, etag: str | None, chunk: int, consume: Callable[[bytes], None]
    ) -> None:
        span = max(chunk, MIN_RANGE)

        async def stream() -> None:
            pinned, offset = etag, 0
            while True:
                data, props = await self._range(root, key, pinned, offset, span)
                pinned = pinned or str(props.etag)  # later ranges must be of the same version
                if data:
                    consume(data)
                offset += len(data)
                if not data or offset >= _blob_size(props, offset):
                    return

        self._sync(stream)

    def open(self, root: BucketRoot, key: str, *, etag: str | None, block_size: int) -> Any:
        now = self.head(root, key)
        if now is None:
            raise StoreResponseError("vanished", "BlobNotFound", "no such blob")
        current = str(now["ETag"])
        if etag is not None and not same_etag(etag, current):
            raise StoreResponseError("changed", "ConditionNotMet", "the blob changed since it was listed")

        def fetch(start: int, length: int) -> bytes:
            data, _ = self._sync(lambda: self._range(root, key, current, start, length))
            return bytes(data)

        return RangedReader(fetch, int(now["Size"]), current, block_size)
