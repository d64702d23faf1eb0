"""The S3 adapter of ``daemon.objectstore``: S3 and S3-compatible stores (MinIO, Ceph, R2, moto) through s3fs.

- a listing page is one ``ListObjectsV2`` call (at most 1,000 keys), the cursor its continuation token;
- a HEAD is ``HeadObject``;
- a read is one streamed ``GetObject``, conditional on the listed ETag (``If-Match``), so an object
  overwritten since it was listed fails as "changed" instead of mixing versions;
- a file for pyarrow is s3fs's own, whose ranged GETs s3fs pins to the ETag seen at open.

Retries (throttling, 5xx, dropped connections) are botocore's "standard" mode. s3fs and
botocore are imported only when a filesystem is made (aiobotocore costs ~0.3 s to import).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from pydantic import SecretStr

from daemon.errors import ConfigError
from daemon.objectstore import (
    BucketRoot,
    ListingPage,
    StoreResponseError,
    check_endpoint_url,
    classify_failure,
    describe_endpoint,
    quiet_sdk_logs,
    same_etag,
)

__all__ = ["S3Store", "make_s3_filesystem"]


def make_s3_filesystem(
    root: BucketRoot,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: SecretStr | None = None,
    session_token: SecretStr | None = None,
    anonymous: bool = False,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    max_attempts: int = 3,
) -> Any:
    """An ``s3fs.S3FileSystem`` for an ``s3://`` root; it connects on first use.

    With no key given, botocore's chain finds the credentials: the environment, the shared
    credentials and config files (``profile`` or ``AWS_PROFILE``), then a container or instance
    role. ``endpoint_url`` points at an S3-compatible store. Retries (throttling, 5xx, dropped
    connections) are botocore's "standard" mode, up to ``max_attempts`` tries a call, with jittered
    backoff; s3fs's own retry loop is switched off so that the two do not multiply.
    """
    if (access_key_id is None) != (secret_access_key is None):
        raise ConfigError("give both the access key id and the secret access key, or neither")
    if endpoint_url is not None:
        check_endpoint_url(endpoint_url)
    quiet_sdk_logs()
    import s3fs  # type: ignore[import-untyped]  # imported late: aiobotocore costs ~0.3 s to import

    options: dict[str, Any] = {
        "anon": anonymous,
        "endpoint_url": endpoint_url,
        "client_kwargs": {"region_name": region} if region else {},
        "config_kwargs": {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"mode": "standard", "max_attempts": max_attempts},
        },
        # One filesystem per call and no listing cache: a poll must see the store as it is now.
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }
    if profile:
        options["profile"] = profile
    if access_key_id is not None and secret_access_key is not None:
        options["key"] = access_key_id
        options["secret"] = secret_access_key.get_secret_value()
        if session_token is not None:
            options["token"] = session_token.get_secret_value()
    try:
        fs = s3fs.S3FileSystem(**options)
    except Exception as exc:
        raise ConfigError(f"cannot set up the S3 client for {root.url}: {str(exc).strip()[:200]}") from exc
    fs.retries = 1  # one try per s3fs call: botocore retries underneath
    return fs


class S3Store:
    """``StoreAdapter`` over an ``s3fs.S3FileSystem``."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    @property
    def endpoint(self) -> str:
        region = (getattr(self.fs, "client_kwargs", None) or {}).get("region_name")
        return describe_endpoint(getattr(self.fs, "endpoint_url", None), region)

    def list_page(
        self, root: BucketRoot, *, page_size: int, cursor: str | None, start_after: str | None
    ) -> ListingPage:
        request: dict[str, Any] = {"Bucket": root.bucket, "Prefix": root.prefix, "MaxKeys": page_size}
        if cursor:
            request["ContinuationToken"] = cursor
        elif start_after:
            request["StartAfter"] = start_after
        page = self.fs.call_s3("list_objects_v2", **request)
        token = page.get("NextContinuationToken")
        return list(page.get("Contents", [])), (str(token) if page.get("IsTruncated") and token else None)

    def head(self, root: BucketRoot, key: str) -> Mapping[str, Any] | None:
        try:
            head = self.fs.call_s3("head_object", Bucket=root.bucket, Key=key)
        except Exception as exc:
            if classify_failure(exc)[0] == "vanished":
                return None
            raise
        return {
            "Key": key,
            "Size": int(head.get("ContentLength", 0)),
            "ETag": str(head.get("ETag", "")),
            "LastModified": head.get("LastModified"),
        }

    def stream(
        self, root: BucketRoot, key: str, *, etag: str | None, chunk: int, consume: Callable[[bytes], None]
    ) -> None:
        from fsspec.asyn import sync  # type: ignore[import-untyped]

        request: dict[str, Any] = {"Bucket": root.bucket, "Key": key}
        if etag:
            request["IfMatch"] = etag

        async def stream() -> None:
            response = await self.fs._call_s3("get_object", **request)
            body = response["Body"]
            try:
                while data := await body.read(chunk):
                    consume(data)
            finally:
                body.close()

        sync(self.fs.loop, stream)

    def open(self, root: BucketRoot, key: str, *, etag: str | None, block_size: int) -> Any:
        handle = self.fs.open(f"{root.bucket}/{key}", "rb", block_size=block_size, cache_type="readahead")
        if etag is not None and not same_etag(str(handle.details.get("ETag", "")), etag):
            handle.close()
            raise StoreResponseError("changed", "", "the object changed since it was listed")
        return cast(Any, handle)
