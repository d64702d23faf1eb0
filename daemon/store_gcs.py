"""The GCS adapter of ``daemon.objectstore``: Google Cloud Storage (and fake-gcs-server) through gcsfs.

gcsfs gives the credentials (Google's application-default chain, a service account file, or
anonymous), the endpoint (``endpoint_url``, else ``STORAGE_EMULATOR_HOST``, else Google's) and its
aiohttp session. The three calls are made here, on that session, against the JSON API:

- a listing page is one ``objects.list`` request (``maxResults`` at most 1,000), the cursor its
  ``pageToken``; only name, size, generation and update time are asked for;
- a HEAD is one ``objects.get`` (metadata) request;
- a read is one streamed media download pinned to the listed *generation*: the bytes of exactly
  that version. When the generation is gone (overwritten or deleted), one metadata request tells
  "changed" from "vanished". Stored bytes are hashed as stored: gzip-encoded objects are not
  decompressed on the way.

The change token of a GCS object is its generation (a number that changes with the content,
not with metadata). gcsfs's own request helper retries up to six times with long pauses and logs
each failure, so requests are retried here instead: ``[gcs] max_attempts`` tries on throttling,
5xx answers and dropped connections, with short jittered pauses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from daemon.errors import ConfigError
from daemon.objectstore import (
    TUNING_ATTR,
    BucketRoot,
    FailureKind,
    ListingPage,
    RangedReader,
    StoreResponseError,
    Tuning,
    check_endpoint_url,
    classify_failure,
    describe_endpoint,
    failure_error,
    quiet_sdk_logs,
    tuning_of,
    with_retries,
)
from schemas.config import GcsConfig

__all__ = ["GcsStore", "make_gcs_filesystem"]

_LIST_FIELDS: Final = "items(name,size,generation,updated),nextPageToken"
_OBJECT_FIELDS: Final = "name,size,generation,updated"
_STATUS_KINDS: Final[dict[int, FailureKind]] = {
    401: "access_denied",
    403: "access_denied",
    408: "throttled",
    412: "changed",
    429: "throttled",
}


def make_gcs_filesystem(root: BucketRoot, settings: GcsConfig) -> Any:
    """A ``gcsfs.core.GCSFileSystem`` (the JSON API one) for ``root``; it connects on first use.

    Credentials: ``anonymous`` (public buckets, emulators), else ``credentials_file``, else Google's
    application-default chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud's login, the metadata server).
    Raises ``SourceError`` when that chain finds nothing, ``ConfigError`` for bad settings.
    """
    endpoint = settings.endpoint_url.rstrip("/") if settings.endpoint_url else None
    if endpoint is not None:
        check_endpoint_url(endpoint)
    token: str
    if settings.anonymous:
        token = "anon"  # noqa: S105 - gcsfs's name for "no credentials"
    elif settings.credentials_file is not None:
        # gcsfs takes a string that is not an existing file for a raw access token: check first.
        if not settings.credentials_file.is_file():
            raise ConfigError(f"[gcs] credentials_file {settings.credentials_file} does not exist or is not a file")
        token = str(settings.credentials_file)
    else:
        token = "google_default"  # noqa: S105 - and not gcsfs's silent fall-back to anonymous access
    quiet_sdk_logs()
    # Imported late: google-auth and aiohttp cost ~0.3 s. The JSON API's filesystem itself,
    # not ``gcsfs.GCSFileSystem``: by default that name is gcsfs's experimental subclass for
    # zonal and hierarchical buckets, which asks the storage-control gRPC API about the bucket
    # before its generic calls (put_file, cat_file, rm_file). Emulators do not serve that API,
    # and each call then waited 60 s; plain objects, all Strandline writes, need none of it.
    from gcsfs.core import GCSFileSystem

    try:
        fs = GCSFileSystem(
            token=token,
            endpoint_url=endpoint,
            # One filesystem per call and no listing cache: a poll must see the store as it is now.
            skip_instance_cache=True,
            use_listings_cache=False,
        )
    except Exception as exc:
        if type(exc).__name__ == "DefaultCredentialsError":
            shown = describe_endpoint(endpoint) if endpoint else "Google Cloud Storage"
            raise failure_error(
                StoreResponseError("no_credentials", "DefaultCredentialsError", "no application-default credentials"),
                root,
                shown,
                "list",
            ) from exc
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot set up the GCS client for {root.url}: {text}") from exc
    setattr(
        fs,
        TUNING_ATTR,
        Tuning(settings.max_attempts, settings.connect_timeout_seconds, settings.read_timeout_seconds),
    )
    return fs


_FRACTION: Final = re.compile(r"(\.\d{6})\d+")


def _parse_time(value: object) -> datetime | None:
    """An RFC 3339 time of the JSON API (``2024-05-01T10:00:00.123Z``; emulators may give nanoseconds)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _contents(item: Mapping[str, Any]) -> dict[str, Any]:
    """An ``objects`` resource in the listing shape; the ETag slot holds the generation."""
    return {
        "Key": str(item["name"]),
        "Size": int(item.get("size", 0)),
        "ETag": str(item.get("generation", "")),
        "LastModified": _parse_time(item.get("updated")),
    }


def _error(status: int, body: bytes, missing: FailureKind) -> StoreResponseError:
    """A JSON API error answer, classified: ``missing`` is what a 404 means for the call made."""
    reason, message = "", ""
    try:
        error = json.loads(body)["error"]
        message = str(error.get("message", ""))
        details = error.get("errors") or []
        reason = str(details[0].get("reason", "")) if details else ""
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        message = body[:200].decode("utf-8", errors="replace").strip()
    kind = missing if status == 404 else _STATUS_KINDS.get(status) or ("throttled" if status >= 500 else "other")
    return StoreResponseError(kind, reason or str(status), f"HTTP {status}: {message or 'no message'}")


class GcsStore:
    """``StoreAdapter`` over a ``gcsfs.core.GCSFileSystem``."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self._tuning = tuning_of(fs)

    @property
    def endpoint(self) -> str:
        return describe_endpoint(str(self.fs._location))

    # -- plumbing -------------------------------------------------------------------------------

    def _sync(self, make: Callable[[], Any]) -> Any:
        from fsspec.asyn import sync  # type: ignore[import-untyped]

        return sync(self.fs.loop, make)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        try:
            return dict(self.fs._get_headers(dict(extra or {})))
        except Exception as exc:  # google-auth refreshing a token: refused, or its endpoint unreachable
            kind = classify_failure(exc)[0]
            raise StoreResponseError(
                kind if kind in ("unreachable", "no_credentials") else "access_denied",
                type(exc).__name__,
                "the credentials could not be refreshed",
            ) from exc

    def _timeout(self) -> Any:
        import aiohttp

        return aiohttp.ClientTimeout(
            total=None, sock_connect=self._tuning.connect_timeout, sock_read=self._tuning.read_timeout
        )

    def _object_url(self, root: BucketRoot, key: str) -> str:
        return f"{self.fs.base}b/{quote(root.bucket, safe='')}/o/{quote(key, safe='')}"

    def _media_url(self, root: BucketRoot, key: str) -> str:
        return f"{self.fs._location}/download/storage/v1/b/{quote(root.bucket, safe='')}/o/{quote(key, safe='')}"

    async def _get_json(self, url: str, params: dict[str, str], missing: FailureKind) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            session = await self.fs._set_session()
            async with session.get(url, params=params, headers=self._headers(), timeout=self._timeout()) as response:
                body = await response.read()
                if response.status == 200:
                    answer = json.loads(body)
                    return answer if isinstance(answer, dict) else {}
                raise _error(response.status, body, missing)

        return await with_retries(once, self._tuning.max_attempts)

    async def _media(self, root: BucketRoot, key: str, generation: str | None, byte_range: str | None) -> Any:
        """An open media response (status 200 or 206); the caller reads and releases it."""
        params = {"alt": "media"}
        if generation:
            params["generation"] = generation
        # "gzip": the stored bytes even of gzip-encoded objects, which aiohttp must then not decompress.
        extra = {"Accept-Encoding": "gzip"}
        if byte_range:
            extra["Range"] = byte_range

        async def once() -> Any:
            session = await self.fs._set_session()
            response = await session.get(
                self._media_url(root, key),
                params=params,
                headers=self._headers(extra),
                timeout=self._timeout(),
                auto_decompress=False,
            )
            if response.status in (200, 206):
                return response
            body = await response.read()
            response.release()
            raise _error(response.status, body, "vanished")

        try:
            return await with_retries(once, self._tuning.max_attempts)
        except StoreResponseError as exc:
            if exc.kind == "vanished" and generation:
                raise await self._gone(root, key, generation) from exc
            raise

    async def _head(self, root: BucketRoot, key: str) -> dict[str, Any] | None:
        try:
            found = await self._get_json(
                self._object_url(root, key), {"projection": "noAcl", "fields": _OBJECT_FIELDS}, "vanished"
            )
        except StoreResponseError as exc:
            if exc.kind == "vanished":
                return None
            raise
        return _contents(found)

    async def _gone(self, root: BucketRoot, key: str, generation: str) -> StoreResponseError:
        """Why a pinned generation is not there: overwritten ("changed") or deleted ("vanished")."""
        now = await self._head(root, key)
        if now is not None and now["ETag"] != generation:
            return StoreResponseError("changed", "generation", f"generation {generation} was replaced by {now['ETag']}")
        return StoreResponseError("vanished", "notFound", "no such object")

    # -- the adapter ----------------------------------------------------------------------------

    def list_page(
        self, root: BucketRoot, *, page_size: int, cursor: str | None, start_after: str | None
    ) -> ListingPage:
        params = {"maxResults": str(page_size), "projection": "noAcl", "fields": _LIST_FIELDS}
        if root.prefix:
            params["prefix"] = root.prefix
        if cursor:
            params["pageToken"] = cursor
        elif start_after:
            params["startOffset"] = start_after  # inclusive: the key itself is dropped below
        url = f"{self.fs.base}b/{quote(root.bucket, safe='')}/o"
        answer = self._sync(lambda: self._get_json(url, params, "bucket_missing"))
        items: list[Mapping[str, Any]] = [_contents(item) for item in answer.get("items") or []]
        if start_after:
            items = [item for item in items if item["Key"] > start_after]
        token = answer.get("nextPageToken")
        return items, (str(token) if token else None)

    def head(self, root: BucketRoot, key: str) -> Mapping[str, Any] | None:
        return self._sync(lambda: self._head(root, key))  # type: ignore[no-any-return]

    def stream(
        self, root: BucketRoot, key: str, *, etag: str | None, chunk: int, consume: Callable[[bytes], None]
    ) -> None:
        async def stream() -> None:
            response = await self._media(root, key, etag, None)
            try:
                async for data in response.content.iter_chunked(chunk):
                    consume(data)
            finally:
                response.release()

        self._sync(stream)

    def read_range(self, root: BucketRoot, key: str, generation: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` of one generation of the object."""

        async def read() -> bytes:
            response = await self._media(root, key, generation, f"bytes={start}-{start + length - 1}")
            try:
                return bytes(await response.read())
            finally:
                response.release()

        return self._sync(read)  # type: ignore[no-any-return]

    def open(self, root: BucketRoot, key: str, *, etag: str | None, block_size: int) -> Any:
        now = self.head(root, key)
        if now is None:
            raise StoreResponseError("vanished", "notFound", "no such object")
        generation = str(now["ETag"])
        if etag is not None and etag != generation:
            raise StoreResponseError("changed", "generation", f"generation {etag} was replaced by {generation}")
        return RangedReader(
            lambda start, length: self.read_range(root, key, generation, start, length),
            int(now["Size"]),
            generation,
            block_size,
        )
