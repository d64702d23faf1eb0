"""Dataset roots in object stores: ``s3://``, ``gs://`` and ``az://`` prefixes listed, checked and hashed.

The pure core takes no network and is tested on its own:

- ``parse_root`` turns ``s3://bucket/prefix`` (or ``gs://``, ``az://container/prefix``) into a
  ``BucketRoot`` (``ConfigError`` when it is not one);
- ``check_key`` / ``safe_key`` turn an object key into the relative POSIX path it is versioned
  under, or say why the key is hostile (traversal, absolute, encoded or look-alike separators,
  control characters, non-NFC text, overlong); a path they return never leaves a folder it is
  joined to;
- ``entries_from_page`` turns one listing page into ``ObjectEntry`` and ``ObjectRejection``
  values, skipping folder placeholders;
- ``classify_failure`` / ``failure_error`` turn any store library's exception into ours.

Around it, one small adapter per store (``StoreAdapter``: a page of a listing with a cursor, a
HEAD, a conditional streamed read of a known version), each over its fsspec library:

- ``daemon.store_s3``: S3 and S3-compatible stores (MinIO, Ceph, R2, moto) through s3fs;
  ListObjectsV2 pages, HEAD, GET with If-Match on the ETag;
- ``daemon.store_gcs``: Google Cloud Storage (and fake-gcs-server) through gcsfs; JSON API pages
  with pageToken, object metadata, media downloads pinned to the object's generation;
- ``daemon.store_azure``: Azure Blob Storage (and Azurite) through adlfs' azure-storage-blob
  client; list_blobs pages with a continuation token, blob properties, ranged downloads with
  If-Match on the ETag.

The functions here pick the adapter from the root's scheme: ``filesystem_for`` builds the
filesystem from the store's config section; ``list_prefix`` pages through a listing, one page in
memory at a time; ``head_object`` asks for one object; ``hash_object`` streams one object through
XXH3-128, the same digest ``daemon.fingerprint`` gives the same bytes on disk; ``open_object``
opens an object for pyarrow; ``check_root`` asks for one key, to fail early with a message that
says what to do.

Errors that concern the whole root (endpoint unreachable, bucket missing, access denied, no
credentials, throttled) are ``SourceError``; errors of one object (vanished, changed since it was
listed, access to it denied) are ``UnreadableDataError``. The libraries' exceptions never get past
this module, and no message carries a credential.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, Protocol, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import xxhash

from daemon.errors import ConfigError, SourceError, StrandlineError, UnreadableDataError
from schemas.config import AzureConfig, GcsConfig, S3Config, StoreSettings, is_bucket_url

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_PAGE_SIZE",
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "TUNING_ATTR",
    "BucketRoot",
    "FailureKind",
    "KeyProblem",
    "KeyRejection",
    "ListingPage",
    "ObjectEntry",
    "ObjectFile",
    "ObjectRejection",
    "RangedReader",
    "Scheme",
    "StoreAdapter",
    "StoreResponseError",
    "Tuning",
    "adapter_for",
    "check_endpoint_url",
    "check_key",
    "check_root",
    "classify_failure",
    "describe_endpoint",
    "display_key",
    "entries_from_page",
    "failure_error",
    "filesystem_for",
    "hash_object",
    "head_object",
    "is_bucket_url",
    "list_prefix",
    "make_filesystem",
    "open_object",
    "parse_root",
    "quiet_sdk_logs",
    "safe_key",
    "same_etag",
    "tuning_of",
    "with_retries",
]

Scheme = Literal["s3", "gs", "az"]
_SCHEMES: Final[dict[str, Scheme]] = {"s3": "s3", "gs": "gs", "az": "az"}

# S3 caps a key at 1024 bytes of UTF-8; common filesystems cap a name at 255 bytes. A relative path
# longer than either could never have come from a local root, so it is refused the same way.
MAX_KEY_BYTES: Final = 1024
MAX_SEGMENT_BYTES: Final = 255
DEFAULT_PAGE_SIZE: Final = 1000  # the most one ListObjectsV2 (or GCS objects.list) call returns
DEFAULT_CHUNK: Final = 1024 * 1024

KeyProblem = Literal[
    "outside_prefix",
    "absolute",
    "empty_segment",
    "dot_segment",
    "backslash",
    "control_character",
    "encoded_separator",
    "unicode_lookalike",
    "not_nfc",
    "name_too_long",
    "non_utf8_name",
    "unaddressable",
]

# Characters that show as a slash or backslash but are none, and that NFKC leaves alone (fullwidth
# U+FF0F and U+FF3C, small U+FE68 are caught by NFKC itself). A key holding one would be listed
# under a name a reader takes for a different folder.
_LOOKALIKE_SEPARATORS: Final = frozenset(
    "\u2215\u2044\u29f8\u29f9\u2571\u2572\u2216\u29f5\u0338\u20e5\u1735\uff0f\uff3c\ufe68"
)
# Full stops NFKC does not map to "." (it maps U+2024, U+2025, U+FE52, U+FF0E itself).
_LOOKALIKE_DOTS: Final = str.maketrans({"\u3002": ".", "\uff61": "."})
# Cc: C0/C1 controls and NUL; Cf: invisible format characters (bidi overrides, zero-width); Cs: lone
# surrogates; Zl/Zp: line and paragraph separators. All make two keys print alike or break a log line.
_CONTROL_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# A key s3fs cannot address by path: it cuts "?versionId=" and what follows off any path.
_S3FS_VERSION_MARKER: Final = "?versionId="
_BUCKET_NAME: Final[dict[Scheme, re.Pattern[str]]] = {
    # S3: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit.
    "s3": re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
    # GCS also allows "_" and, with dots, up to 222 characters.
    "gs": re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"),
    # An Azure container: 3-63 of a-z 0-9 -.
    "az": re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]"),
}


# --- the pure core ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketRoot:
    """A dataset root in an object store. ``prefix`` is "" (the whole bucket) or ends with "/"."""

    scheme: Scheme
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}"

    def __str__(self) -> str:
        return self.url


def _redact_authority(authority: str) -> str:
    """A URL's host part with any ``user:password@`` replaced by ``***@``, for messages."""
    return "***@" + authority.rpartition("@")[2] if "@" in authority else authority


def _redact(root: str) -> str:
    """``root`` with any ``user:password@`` removed, for messages."""
    scheme, sep, rest = root.partition("://")
    if not sep:
        return root
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{_redact_authority(authority)}{slash}{path}"


def parse_root(root: str) -> BucketRoot:
    """The bucket and prefix of ``s3://bucket/prefix`` (also ``gs://`` and ``az://``).

    The prefix is normalised to end with "/", so ``s3://b/data`` never matches ``data2/``. Raises
    ``ConfigError`` naming the root and what is wrong with it.
    """
    shown = repr(_redact(root))
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(/.*)?", root, flags=re.DOTALL)
    if match is None:
        raise ConfigError(f"dataset root {shown} is not a bucket URL: write it as s3://BUCKET/PREFIX")
    raw_scheme, bucket, rest = match.group(1), match.group(2), match.group(3) or ""
    scheme = _SCHEMES.get(raw_scheme.lower())
    if scheme is None:
        raise ConfigError(
            f"dataset root {shown}: scheme {raw_scheme!r} is not supported (allowed: s3://, gs://, az://)"
        )
    if not _BUCKET_NAME[scheme].fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"dataset root {shown}: {_redact_authority(bucket)!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, '-' and '.'; no user, port or credentials in the URL)"
        )
    prefix = rest[1:]
    if prefix:
        stripped = prefix[:-1] if prefix.endswith("/") else prefix
        verdict = check_key(stripped, "")
        if isinstance(verdict, KeyRejection):
            raise ConfigError(f"dataset root {shown}: the prefix is unsafe: {verdict.detail}")
        prefix = stripped + "/"
    return BucketRoot(scheme, bucket, prefix)


@dataclass(frozen=True, slots=True)
class KeyRejection:
    """Why a key cannot be versioned: a problem code and a sentence for the log and the event."""

    problem: KeyProblem
    detail: str


def _segment_problem(segment: str) -> KeyRejection | None:
    """The problem of one path segment, checked as written, percent-decoded and NFKC-normalised."""
    if not segment:
        return KeyRejection("empty_segment", "empty path segment ('//' or a trailing '/'): it aliases another path")
    if set(segment) == {"."}:
        return KeyRejection("dot_segment", f"{segment!r} segment: it would step out of or alias a folder")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        return KeyRejection("name_too_long", f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if "\\" in segment:
        return KeyRejection("backslash", "backslash in the key: a path separator on Windows")
    for char in segment:
        if char in _LOOKALIKE_SEPARATORS:
            return KeyRejection(
                "unicode_lookalike", f"U+{ord(char):04X} ({unicodedata.name(char, '?')}) looks like a path separator"
            )
    # Forms a later reader might turn the segment into: a URL decoder (maybe twice), a
    # Unicode-normalising filesystem or tool. None of them may become a separator or a dot segment.
    forms = [segment]
    seen = {segment}
    while forms:
        form = forms.pop()
        for candidate, problem in (
            (unquote(form, errors="replace"), "encoded_separator"),
            (unicodedata.normalize("NFKC", form).translate(_LOOKALIKE_DOTS), "unicode_lookalike"),
        ):
            if candidate in seen:
                continue
            seen.add(candidate)
            if "/" in candidate or "\\" in candidate or set(candidate) <= {"."}:
                how = "percent-encoded" if problem == "encoded_separator" else "Unicode look-alike"
                return KeyRejection(
                    cast(KeyProblem, problem), f"{how} path syntax: segment {segment!r} can be read as {candidate!r}"
                )
            if any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in candidate):
                return KeyRejection("control_character", f"segment {segment!r} decodes to a control character")
            if len(seen) < 8:  # each step shrinks or settles the text; 8 forms is far past any real name
                forms.append(candidate)
    return None


def check_key(key: str, prefix: str) -> str | KeyRejection:
    """The relative POSIX path of ``key`` under ``prefix``, or why it cannot be one.

    Pure. A returned path is non-empty, relative, NFC, made of non-empty segments that are neither
    "." nor "..", and free of backslashes, control and invisible characters, look-alike separators
    and percent escapes that decode to path syntax; joined under any folder it stays inside it.
    Keys that are not NFC are refused rather than normalised: two keys that differ only in
    normalisation would otherwise become one path and hide each other.
    """
    if not key.startswith(prefix):
        return KeyRejection("outside_prefix", f"key is not under the prefix {prefix!r}")
    rel = key[len(prefix) :]
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return KeyRejection("non_utf8_name", "key is not valid UTF-8; rename the object to version it")
    if size > MAX_KEY_BYTES:
        return KeyRejection("name_too_long", f"key longer than {MAX_KEY_BYTES} bytes")
    if rel.startswith("/"):
        return KeyRejection("absolute", "key starts with '/' below the prefix: it would be an absolute path")
    for char in rel:
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            return KeyRejection(
                "control_character",
                f"control or invisible character U+{ord(char):04X} in the key; rename the object to version it",
            )
    if unicodedata.normalize("NFC", rel) != rel:
        return KeyRejection(
            "not_nfc", "key is not in Unicode NFC form: it may alias another key that looks the same; rename it in NFC"
        )
    for segment in rel.split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return rel


def safe_key(key: str, prefix: str) -> str:
    """``check_key``, raising ``UnreadableDataError`` (with the reason) for a hostile key."""
    verdict = check_key(key, prefix)
    if isinstance(verdict, KeyRejection):
        raise UnreadableDataError(f"object key {display_key(key)} refused ({verdict.problem}): {verdict.detail}")
    return verdict


def display_key(key: str) -> str:
    """A printable, quoted form of a key: control and invisible characters shown as escapes."""
    out = []
    for char in key:
        out.append(char.encode("unicode_escape").decode("ascii") if unicodedata.category(char)[0] in "CZ" else char)
    return "'" + "".join(out).replace("'", "\\'") + "'"


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One object of a listing: its path relative to the root and the state that vouches for it.

    ``(size, etag, last_modified)`` is the object's stat: when all three are unchanged since the
    catalog last saw the key, its bytes are unchanged and need not be read again. ``etag`` is the
    store's change token of this version: the ETag on S3 and Azure, the generation on GCS.
    """

    rel_path: str
    key: str
    size: int
    etag: str
    last_modified: datetime

    @property
    def mtime_ns(self) -> int:
        """``last_modified`` as integer nanoseconds since the epoch, like ``st_mtime_ns``."""
        return (self.last_modified - _EPOCH) // timedelta(microseconds=1) * 1000


@dataclass(frozen=True, slots=True)
class ObjectRejection:
    """A listed key that is not versioned: the key (use ``display_key`` to print it) and why."""

    key: str
    problem: KeyProblem
    detail: str


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        return _EPOCH
    # botocore and azure-core give aware datetimes (maybe in the local zone); a naive one is taken as UTC.
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def entries_from_page(
    contents: Iterable[Mapping[str, Any]], root: BucketRoot
) -> Iterator[ObjectEntry | ObjectRejection]:
    """Entries and rejections of one listing page (``ListingPage``: ``ListObjectsV2``'s ``Contents``
    shape, which every adapter answers in), in its order.

    Empty keys ending in "/" are folder placeholders (made by consoles and Hadoop) and are skipped.
    """
    for obj in contents:
        key = str(obj["Key"])
        size = int(obj.get("Size", 0))
        if key.endswith("/") and size == 0:
            continue
        verdict = check_key(key, root.prefix)
        if isinstance(verdict, str) and root.scheme == "s3" and _S3FS_VERSION_MARKER in key:
            verdict = KeyRejection("unaddressable", f"key holds {_S3FS_VERSION_MARKER!r}, which s3fs cannot address")
        if isinstance(verdict, KeyRejection):
            yield ObjectRejection(key, verdict.problem, verdict.detail)
            continue
        yield ObjectEntry(
            rel_path=verdict,
            key=key,
            size=size,
            etag=str(obj.get("ETag", "")),
            last_modified=_utc(obj.get("LastModified")),
        )


FailureKind = Literal[
    "bucket_missing", "access_denied", "no_credentials", "unreachable", "throttled", "vanished", "changed", "other"
]

# Error codes of S3 (botocore's ClientError) and Azure (azure-core's HttpResponseError.error_code),
# then bare HTTP statuses for answers without a code.
_CODES: Final[dict[str, FailureKind]] = {
    "NoSuchBucket": "bucket_missing",
    "ContainerNotFound": "bucket_missing",
    "AccessDenied": "access_denied",
    "AllAccessDisabled": "access_denied",
    "AccountProblem": "access_denied",
    "InvalidAccessKeyId": "access_denied",
    "SignatureDoesNotMatch": "access_denied",
    "ExpiredToken": "access_denied",
    "InvalidToken": "access_denied",
    "TokenRefreshRequired": "access_denied",
    "RequestTimeTooSkewed": "access_denied",
    "AuthenticationFailed": "access_denied",
    "AuthorizationFailure": "access_denied",
    "AuthorizationPermissionMismatch": "access_denied",
    "AuthorizationResourceTypeMismatch": "access_denied",
    "InsufficientAccountPermissions": "access_denied",
    "NoAuthenticationInformation": "access_denied",
    "InvalidAuthenticationInfo": "access_denied",
    "401": "access_denied",
    "403": "access_denied",
    "SlowDown": "throttled",
    "Throttling": "throttled",
    "ThrottlingException": "throttled",
    "RequestLimitExceeded": "throttled",
    "TooManyRequests": "throttled",
    "TooManyRequestsException": "throttled",
    "ServiceUnavailable": "throttled",
    "ServerBusy": "throttled",
    "500": "throttled",
    "502": "throttled",
    "503": "throttled",
    "504": "throttled",
    "429": "throttled",
    "NoSuchKey": "vanished",
    "BlobNotFound": "vanished",
    "404": "vanished",
    "PreconditionFailed": "changed",
    "ConditionNotMet": "changed",
    "412": "changed",
}
_UNREACHABLE_TYPES: Final = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "AioReadTimeoutError",
        "ResponseStreamingError",
        "ProxyConnectionError",
        "ClientConnectorError",
        "ClientConnectorDNSError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientOSError",
        "ConnectionRefusedError",
        "TimeoutError",
        "FSTimeoutError",
        "ServiceRequestError",  # azure-core: the request never got an answer
        "ServiceResponseError",
        "ServiceRequestTimeoutError",
        "ServiceResponseTimeoutError",
        "TransportError",  # google-auth: the token endpoint cannot be reached
    }
)
_NO_CREDENTIAL_TYPES: Final = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "ProfileNotFound",
        "CredentialRetrievalError",
        "DefaultCredentialsError",  # google-auth: nothing in the application-default chain
        "CredentialUnavailableError",  # azure-identity: no credential in DefaultAzureCredential's chain
    }
)
_REFUSED_CREDENTIAL_TYPES: Final = frozenset({"ClientAuthenticationError", "RefreshError"})


class StoreResponseError(Exception):
    """A store's answer that an adapter classified itself (a GCS JSON error, a pinned generation gone).

    Adapters raise it, or their library's own errors; ``failure_error`` turns both into ours.
    """

    def __init__(self, kind: FailureKind, code: str, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.code = code


def _chain(exc: BaseException) -> list[BaseException]:
    seen: set[int] = set()
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def classify_failure(exc: BaseException) -> tuple[FailureKind, str]:
    """What went wrong, from an exception raised by a store's library, and the store's error code if any.

    Pure: it follows ``__cause__``/``__context__`` (s3fs wraps botocore's ``ClientError`` in an
    ``OSError``) and reads the first structured answer found: an adapter's ``StoreResponseError``,
    botocore's error code, azure-core's ``error_code`` and HTTP status. Failing that, the type of
    a connection or credentials error decides.
    """
    chain = _chain(exc)
    for err in chain:
        if isinstance(err, StoreResponseError):
            return err.kind, err.code
        response = getattr(err, "response", None)
        if isinstance(response, Mapping):
            error = response.get("Error") or {}
            code = str(error.get("Code", "")) if isinstance(error, Mapping) else ""
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            kind = _CODES.get(code) or _CODES.get(str(status))
            return kind or "other", code
        status_code = getattr(err, "status_code", None)
        if isinstance(status_code, int) and not isinstance(status_code, bool):  # azure-core
            raw = getattr(err, "error_code", None)
            code = str(getattr(raw, "value", raw) or "")  # a StorageErrorCode enum, or a plain string
            return _CODES.get(code) or _CODES.get(str(status_code)) or "other", code or str(status_code)
    for err in chain:
        name = type(err).__name__
        if name in _NO_CREDENTIAL_TYPES:
            return "no_credentials", name
        if name in _REFUSED_CREDENTIAL_TYPES:
            return "access_denied", name
        if name in _UNREACHABLE_TYPES or isinstance(err, ConnectionError | TimeoutError):
            return "unreachable", name
        if name == "FileExpired":  # s3fs: the ETag moved while a file was open
            return "changed", name
        # s3fs's own answers with no S3 response behind them (a HEAD has no error body).
        if isinstance(err, FileNotFoundError):
            return "vanished", ""
        if isinstance(err, PermissionError):
            return "access_denied", ""
    return "other", type(exc).__name__


def describe_endpoint(endpoint_url: str | None, region: str | None = None) -> str:
    """The endpoint for a message: user, password and query removed, so no secret is ever printed."""
    if not endpoint_url:
        return f"the AWS S3 endpoint{f' of {region}' if region else ''}"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True, slots=True)
class _Hints:
    """What to tell an operator, per store: where credentials come from, which permissions to grant."""

    container: str
    credentials: str
    read_grant: str
    list_grant: str


_HINTS: Final[dict[Scheme, _Hints]] = {
    "s3": _Hints(
        "bucket",
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a shared credentials file, or run "
        "with an instance or container role",
        "grant s3:GetObject (and kms:Decrypt for encrypted objects) to the daemon's credentials",
        "grant s3:ListBucket and s3:GetObject on the bucket to the daemon's credentials, or fix the key",
    ),
    "gs": _Hints(
        "bucket",
        "set GOOGLE_APPLICATION_CREDENTIALS (or [gcs] credentials_file) to a service account key file, run "
        "`gcloud auth application-default login`, or run on Google Cloud with a service account "
        "([gcs] anonymous = true for public buckets)",
        "grant storage.objects.get (roles/storage.objectViewer) to the daemon's account",
        "grant storage.objects.list and storage.objects.get (roles/storage.objectViewer) on the bucket to the "
        "daemon's account, or fix the credentials",
    ),
    "az": _Hints(
        "container",
        "set [azure] connection_string (STRANDLINE_AZURE_CONNECTION_STRING or AZURE_STORAGE_CONNECTION_STRING), "
        "or account_name with account_key or sas_token, or sign in for DefaultAzureCredential (az login, a "
        "managed identity, AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET)",
        "grant the Storage Blob Data Reader role (or a SAS with read permission) to the daemon's identity",
        "grant the Storage Blob Data Reader role on the container (or a SAS with list and read permissions) to "
        "the daemon's identity, or fix the key",
    ),
}


def failure_error(
    exc: BaseException, root: BucketRoot, endpoint: str, action: str, key: str | None = None
) -> StrandlineError:
    """Our error for a failed call: ``SourceError`` for the root, ``UnreadableDataError`` for one object."""
    kind, code = classify_failure(exc)
    hints = _HINTS[root.scheme]
    at = f"{root.url} at {endpoint}"
    suffix = f" ({code})" if code else ""
    if kind == "bucket_missing":
        return SourceError(
            f"{hints.container} {root.bucket!r} does not exist at {endpoint}: create it or fix the root in the config"
        )
    if kind == "no_credentials":
        return SourceError(f"no credentials to {action} {at}{suffix}: {hints.credentials}")
    if kind == "unreachable":
        return SourceError(
            f"cannot reach {endpoint} to {action} {root.url}{suffix}: check the endpoint URL, the network "
            "and that the server runs; the next poll retries"
        )
    if kind == "throttled":
        return SourceError(
            f"{endpoint} is throttling requests to {action} {root.url}{suffix}: the next poll retries; "
            "raise the poll interval if this persists"
        )
    if key is not None:
        shown = display_key(key)
        if kind == "vanished":
            return UnreadableDataError(f"object {shown} in {at} disappeared before it could be read")
        if kind == "changed":
            return UnreadableDataError(
                f"object {shown} in {at} changed since it was listed; the next poll reads the new version"
            )
        if kind == "access_denied":
            return UnreadableDataError(f"access denied to object {shown} in {at}{suffix}: {hints.read_grant}")
        return UnreadableDataError(f"cannot {action} object {shown} in {at}{suffix}: {_first_line(exc)}")
    if kind == "access_denied":
        return SourceError(f"access denied to {action} {at}{suffix}: {hints.list_grant}")
    return SourceError(f"cannot {action} {at}{suffix}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the adapters: one per store, behind one small interface ------------------------------------

ListingPage = tuple[list[Mapping[str, Any]], str | None]
"""One listing page: objects as ``{"Key", "Size", "ETag", "LastModified"}`` (the shape of S3's
``ListObjectsV2`` ``Contents``) in key order, and the cursor of the next page (None after the last)."""


class StoreAdapter(Protocol):
    """The few calls a store must answer. One implementation per store wraps its library's fsspec
    filesystem (``daemon.store_s3``, ``daemon.store_gcs``, ``daemon.store_azure``) and raises that
    library's errors or ``StoreResponseError``; the functions of this module translate both.

    ``etag`` is the store's change token of one object version: S3's ETag, GCS's generation,
    Azure's ETag. Reads given one return exactly that version's bytes or fail as "changed".
    """

    fs: Any

    @property
    def endpoint(self) -> str:
        """The endpoint, printable: no user, password or query (a SAS token) in it."""
        ...

    def list_page(
        self, root: BucketRoot, *, page_size: int, cursor: str | None, start_after: str | None
    ) -> ListingPage: ...

    def head(self, root: BucketRoot, key: str) -> Mapping[str, Any] | None:
        """The object's listing entry as the store answers now; None when there is no such object."""
        ...

    def stream(
        self, root: BucketRoot, key: str, *, etag: str | None, chunk: int, consume: Callable[[bytes], None]
    ) -> None:
        """Hand the object's bytes to ``consume`` in order, at most about ``chunk`` bytes at a time."""
        ...

    def open(self, root: BucketRoot, key: str, *, etag: str | None, block_size: int) -> Any:
        """A file-like handle (``read``, ``seek``, ``tell``, ``close``, ``size``, ``details["ETag"]``)."""
        ...


@dataclass(frozen=True, slots=True)
class Tuning:
    """Retries and timeouts of the adapters that retry themselves (GCS, Azure), kept on the filesystem."""

    max_attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


TUNING_ATTR: Final = "_strandline_tuning"


def tuning_of(fs: Any) -> Tuning:
    tuning = getattr(fs, TUNING_ATTR, None)
    return tuning if isinstance(tuning, Tuning) else Tuning()


_T = TypeVar("_T")


async def with_retries(call: Callable[[], Awaitable[_T]], attempts: int) -> _T:
    """``await call()``, again after a jittered, growing pause while it fails as throttled or
    unreachable, ``attempts`` tries in all; other failures are raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Exception as exc:
            if attempt >= attempts or classify_failure(exc)[0] not in ("throttled", "unreachable"):
                raise
        pause = min(5.0, 0.2 * 2 ** (attempt - 1))
        await asyncio.sleep(pause * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable: the last attempt returns or raises")


def adapter_for(fs: Any, root: BucketRoot) -> StoreAdapter:
    """The adapter of ``root``'s store around ``fs`` (made by ``filesystem_for`` or ``make_filesystem``)."""
    if root.scheme == "gs":
        from daemon.store_gcs import GcsStore

        return GcsStore(fs)
    if root.scheme == "az":
        from daemon.store_azure import AzureStore

        return AzureStore(fs)
    from daemon.store_s3 import S3Store

    return S3Store(fs)


def filesystem_for(root: BucketRoot, settings: StoreSettings) -> Any:
    """The fsspec filesystem of ``root``'s store, built from its config section; it connects on first use.

    ``settings`` is the section ``StrandlineConfig.store_settings`` picks: [s3], [gcs] or [azure].
    """
    if root.scheme == "gs":
        if not isinstance(settings, GcsConfig):
            raise ConfigError(f"dataset root {root.url} takes the [gcs] settings")
        from daemon.store_gcs import make_gcs_filesystem

        return make_gcs_filesystem(root, settings)
    if root.scheme == "az":
        if not isinstance(settings, AzureConfig):
            raise ConfigError(f"dataset root {root.url} takes the [azure] settings")
        from daemon.store_azure import make_azure_filesystem

        return make_azure_filesystem(root, settings)
    if not isinstance(settings, S3Config):
        raise ConfigError(f"dataset root {root.url} takes the [s3] settings")
    return make_filesystem(
        root,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        profile=settings.profile,
        access_key_id=settings.access_key_id,
        secret_access_key=settings.secret_access_key,
        session_token=settings.session_token,
        anonymous=settings.anonymous,
        max_attempts=settings.max_attempts,
    )


def make_filesystem(root: BucketRoot, **options: Any) -> Any:
    """An S3 filesystem (``s3fs.S3FileSystem``) for an ``s3://`` root; it connects on first use.

    ``options`` are those of ``daemon.store_s3.make_s3_filesystem`` (endpoint, region, profile,
    keys, timeouts, attempts). ``gs://`` and ``az://`` roots take their own settings: see
    ``filesystem_for``.
    """
    if root.scheme != "s3":
        raise ConfigError(
            f"dataset root {root.url}: make_filesystem builds S3 clients; {root.scheme}:// roots take the "
            f"[{'gcs' if root.scheme == 'gs' else 'azure'}] settings (filesystem_for)"
        )
    from daemon.store_s3 import make_s3_filesystem

    return make_s3_filesystem(root, **options)


def check_endpoint_url(endpoint_url: str) -> None:
    """Refuse an endpoint that is not ``http(s)://HOST[:PORT]`` or that holds a user or password
    (SDKs log the URL, user and password included, at DEBUG)."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint URL {describe_endpoint(endpoint_url)!r} must be http(s)://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"endpoint URL {describe_endpoint(endpoint_url)!r} holds a user or password: give credentials "
            "through the environment, a credentials file or the credential settings instead"
        )


_SDK_LOGGERS: Final = {
    # DEBUG request lines with headers (the access key id, signatures).
    "botocore": logging.INFO,
    "aiobotocore": logging.INFO,
    # One INFO line per request and response, headers included (redacted, but a flood at INFO).
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,
    # INFO lines for every credential it tries.
    "azure.identity": logging.WARNING,
}


def quiet_sdk_logs() -> None:
    """Keep the store SDKs' chatty or header-bearing log lines out of our logs.

    Only loggers nobody configured are raised, so an operator can still ask for them.
    """
    for name, level in _SDK_LOGGERS.items():
        sdk_logger = logging.getLogger(name)
        if sdk_logger.level == logging.NOTSET:
            sdk_logger.setLevel(level)


def check_root(fs: Any, root: BucketRoot) -> None:
    """Ask the store for one key under ``root``; ``SourceError`` saying what to fix if that fails."""
    store = adapter_for(fs, root)
    try:
        store.list_page(root, page_size=1, cursor=None, start_after=None)
    except Exception as exc:
        raise failure_error(exc, root, store.endpoint, "list") from exc


_MAX_PAGE_SIZE: Final[dict[Scheme, int]] = {"s3": 1000, "gs": 1000, "az": 5000}


def list_prefix(
    fs: Any, root: BucketRoot, *, page_size: int = DEFAULT_PAGE_SIZE, start_after: str | None = None
) -> Iterator[ObjectEntry | ObjectRejection]:
    """Every object below ``root``, in the store's key order (UTF-8 bytes), lazily.

    One page of at most ``page_size`` keys (S3 and GCS: 1,000 at most; Azure 5,000) is fetched
    when the previous one is consumed, so memory does not grow with the bucket. Folder
    placeholders are skipped; hostile keys come out as ``ObjectRejection`` values in their place,
    never as entries. ``start_after`` resumes a listing after a key. Objects still being uploaded
    (S3 multipart uploads, uncommitted Azure blocks) are not objects yet and are not listed.
    Raises ``SourceError`` when a page cannot be fetched.
    """
    most = _MAX_PAGE_SIZE[root.scheme]
    if not 1 <= page_size <= most:
        raise ValueError(f"page_size must be 1..{most}, not {page_size}")
    store = adapter_for(fs, root)
    cursor: str | None = None
    while True:
        try:
            contents, cursor = store.list_page(root, page_size=page_size, cursor=cursor, start_after=start_after)
        except Exception as exc:
            raise failure_error(exc, root, store.endpoint, "list") from exc
        yield from entries_from_page(contents, root)
        if cursor is None:
            return


def head_object(fs: Any, root: BucketRoot, key: str) -> ObjectEntry | None:
    """The object at ``key`` as the store sees it now (one HEAD or metadata request); None when
    there is none. ``rel_path`` is the key below the root's prefix, unchecked: pass known keys."""
    store = adapter_for(fs, root)
    try:
        found = store.head(root, key)
    except Exception as exc:
        if classify_failure(exc)[0] == "vanished":
            return None
        raise failure_error(exc, root, store.endpoint, "look at", key) from exc
    if found is None:
        return None
    return ObjectEntry(
        rel_path=key.removeprefix(root.prefix),
        key=key,
        size=int(found.get("Size", 0)),
        etag=str(found.get("ETag", "")),
        last_modified=_utc(found.get("LastModified")),
    )


def hash_object(
    fs: Any,
    root: BucketRoot,
    key: str,
    *,
    etag: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    sink: BinaryIO | None = None,
) -> str:
    """XXH3-128 of an object's bytes as 32 lowercase hex digits, streamed.

    The digest equals ``daemon.fingerprint.hash_file`` of the same bytes in a local file. At most
    about ``chunk`` bytes are held at a time (Azure reads ranges of at least 4 MiB). With ``etag``
    (the listed change token) the read is conditional: an object overwritten since it was listed
    raises ``UnreadableDataError`` instead of hashing bytes the listing never saw. ``sink`` also
    receives the bytes (a local copy of exactly what was hashed).
    """
    store = adapter_for(fs, root)
    hasher = xxhash.xxh3_128()

    def consume(data: bytes) -> None:
        hasher.update(data)
        if sink is not None:
            sink.write(data)

    try:
        store.stream(root, key, etag=etag, chunk=chunk, consume=consume)
    except Exception as exc:
        raise failure_error(exc, root, store.endpoint, "read", key) from exc
    return str(hasher.hexdigest())


class ObjectFile(io.RawIOBase):
    """A seekable, read-only binary file of one object version, as ``open_object`` returns it.

    pyarrow reads it like a local file. Every failure while reading comes out as our error: an
    object overwritten since it was opened raises ``UnreadableDataError`` (reads are ranged GETs
    conditional on the change token seen at open, so two versions are never mixed), a lost
    endpoint ``SourceError``.
    """

    def __init__(self, handle: Any, fail: Callable[[BaseException], StrandlineError]) -> None:
        super().__init__()
        self._handle = handle
        self._fail = fail

    @property
    def size(self) -> int:
        return int(self._handle.size)

    @property
    def etag(self) -> str:
        return str(self._handle.details.get("ETag", ""))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        try:
            return bytes(self._handle.read(-1 if size is None else size))
        except Exception as exc:
            raise self._fail(exc) from exc

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        try:
            return int(self._handle.seek(offset, whence))
        except Exception as exc:
            raise self._fail(exc) from exc

    def tell(self) -> int:
        return int(self._handle.tell())

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


class RangedReader:
    """A file-like handle over ranged reads of one object version, one block cached (read ahead).

    ``fetch(start, length)`` returns up to ``length`` bytes from ``start``, pinned to the version
    ``etag`` names; the adapters of stores without an fsspec file that pins versions use it.
    """

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, etag: str, block_size: int) -> None:
        self._fetch = fetch
        self.size = size
        self.details = {"ETag": etag}
        self._block_size = max(1, block_size)
        self._pos = 0
        self._block_start = 0
        self._block = b""

    def read(self, size: int = -1) -> bytes:
        remaining = max(self.size - self._pos, 0)
        size = remaining if size < 0 else min(size, remaining)
        out = bytearray()
        while len(out) < size:
            offset = self._pos - self._block_start
            if not 0 <= offset < len(self._block):
                want = min(max(self._block_size, size - len(out)), self.size - self._pos)
                self._block = self._fetch(self._pos, want)
                self._block_start, offset = self._pos, 0
                if not self._block:
                    break
            piece = self._block[offset : offset + size - len(out)]
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._block = b""


def same_etag(a: str, b: str) -> bool:
    """ETags compared as stores write them: some quote them in one API and not another."""
    return a.removeprefix("W/").strip('"') == b.removeprefix("W/").strip('"')


def open_object(
    fs: Any, root: BucketRoot, key: str, *, etag: str | None = None, block_size: int = 8 * DEFAULT_CHUNK
) -> ObjectFile:
    """A seekable binary file of one object, for pyarrow (``pq.ParquetFile``, ``pa.csv.open_csv``).

    Reads are ranged GETs of ``block_size`` bytes (read ahead), each conditional on the change
    token seen at open. With ``etag`` (the listed one), an object already changed since it was
    listed raises ``UnreadableDataError`` at once. Close it (it is a context manager).
    """
    store = adapter_for(fs, root)
    endpoint = store.endpoint
    try:
        handle = store.open(root, key, etag=etag, block_size=block_size)
    except Exception as exc:
        raise failure_error(exc, root, endpoint, "open", key) from exc
    return ObjectFile(handle, lambda exc: failure_error(exc, root, endpoint, "read", key))
