"""Bucket roots: the pure key and root checks, and the s3fs adapter against a real S3-compatible server.

The server is moto's standalone server in its own process on 127.0.0.1 (``s3_endpoint``), each
test with a fresh bucket (``bucket``). No Kafka is needed.
"""

from __future__ import annotations

import io
import os
import random
import re
import socket
import subprocess
import sys
import threading
import tracemalloc
import unicodedata
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import xxhash
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from pydantic import SecretStr

from daemon.errors import ConfigError, SourceError, UnreadableDataError
from daemon.fingerprint import hash_file
from daemon.objectstore import (
    BucketRoot,
    KeyRejection,
    ObjectEntry,
    ObjectRejection,
    check_key,
    check_root,
    describe_endpoint,
    entries_from_page,
    failure_error,
    hash_object,
    is_bucket_url,
    list_prefix,
    make_filesystem,
    open_object,
    parse_root,
    safe_key,
)
from tests.conftest import REPO, S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY, s3_server

# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def s3(s3_endpoint: str, bucket: str) -> Iterator[Any]:
    """A boto3 client of the test server (credentials from the environment ``bucket`` set)."""
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    yield client
    client.close()


def _fs(endpoint: str, root: BucketRoot, **kwargs: Any) -> Any:
    return make_filesystem(root, endpoint_url=endpoint, **kwargs)


def _entries(items: list[ObjectEntry | ObjectRejection]) -> dict[str, ObjectEntry]:
    return {e.rel_path: e for e in items if isinstance(e, ObjectEntry)}


def _rejections(items: list[ObjectEntry | ObjectRejection]) -> dict[str, ObjectRejection]:
    return {e.key: e for e in items if isinstance(e, ObjectRejection)}


def _count_calls(fs: Any, operation: str) -> list[int]:
    """A one-element counter bumped by every ``operation`` request the filesystem's client makes."""
    calls = [0]

    def count(**_: object) -> None:
        calls[0] += 1

    fs.s3.meta.events.register(f"before-call.s3.{operation}", count)
    return calls


def _capture_authorization(fs: Any) -> list[str]:
    """The Authorization headers the filesystem's client sends (to see which credentials it used)."""
    seen: list[str] = []

    def capture(request: Any, **_: object) -> None:
        seen.append(str(request.headers.get("Authorization", "")))

    fs.s3.meta.events.register("before-send.s3", capture)
    return seen


def _ok(key: str, prefix: str = "") -> str:
    verdict = check_key(key, prefix)
    assert isinstance(verdict, str), f"{key!r} refused: {verdict}"
    return verdict


# --- parse_root -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("s3://my-bucket", BucketRoot("s3", "my-bucket", "")),
        ("s3://my-bucket/", BucketRoot("s3", "my-bucket", "")),
        ("s3://my-bucket/data", BucketRoot("s3", "my-bucket", "data/")),
        ("s3://my-bucket/data/", BucketRoot("s3", "my-bucket", "data/")),
        ("S3://my.bucket.v2/a/b c/", BucketRoot("s3", "my.bucket.v2", "a/b c/")),
        ("gs://gcs_bucket/x", BucketRoot("gs", "gcs_bucket", "x/")),
        ("az://container-1/x/y", BucketRoot("az", "container-1", "x/y/")),
    ],
)
def test_parse_root_normalises_the_prefix_to_end_with_a_slash(root: str, expected: BucketRoot) -> None:
    parsed = parse_root(root)
    assert parsed == expected
    assert parsed.url == f"{expected.scheme}://{expected.bucket}/{expected.prefix}"


@pytest.mark.parametrize(
    "root",
    [
        "/data/sales",
        "s3:/bucket/x",
        "http://bucket/x",
        "file:///data",
        "s3://",
        "s3:///x",
        "s3://ab",
        "s3://Upper-Case/x",
        "s3://-dash/x",
        "s3://b..b/x",
        "s3://bucket_underscore/x",
        "s3://bucket:9000/x",
        "s3://bucket//x",
        "s3://bucket/a//b",
        "s3://bucket/a/../b",
        "s3://bucket/%2e%2e/b",
        "s3://bucket/a\\b",
        "s3://bucket/a\x00b",
    ],
)
def test_parse_root_refuses_what_is_not_a_safe_bucket_root(root: str) -> None:
    with pytest.raises(ConfigError, match="dataset root"):
        parse_root(root)


def test_parse_root_never_echoes_credentials_written_in_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        parse_root("s3://AKIAEXAMPLE:hunter2secret@bucket/x")
    assert "hunter2secret" not in str(info.value)
    assert "AKIAEXAMPLE" not in str(info.value)


def test_is_bucket_url_tells_urls_from_local_paths() -> None:
    assert is_bucket_url("s3://b/x")
    assert is_bucket_url("gs://b")
    assert not is_bucket_url("/data/s3://x")
    assert not is_bucket_url("data")
    assert not is_bucket_url("C:\\data")


# --- check_key / safe_key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "rel"),
    [
        ("data/a.csv", "a.csv"),
        ("data/sub/dir/part-0001.parquet", "sub/dir/part-0001.parquet"),
        ("data/with space.csv", "with space.csv"),
        ("data/100%.csv", "100%.csv"),
        ("data/a%20b.csv", "a%20b.csv"),
        ("data/a..b.csv", "a..b.csv"),
        ("data/...hidden", "...hidden"),
        ("data/.hidden", ".hidden"),
        ("data/x~", "x~"),
        ("data/caf\u00e9.csv", "caf\u00e9.csv"),
        ("data/日本語/データ.csv", "日本語/データ.csv"),
        ("data/ｶﾀｶﾅ.csv", "ｶﾀｶﾅ.csv"),  # NFKC would change it, but into nothing that is path syntax
        ("data/x²+y½", "x²+y½"),
        ("data/a+b=c&d;e,f@g", "a+b=c&d;e,f@g"),
        ("data/" + "n" * 255, "n" * 255),
    ],
)
def test_safe_key_returns_the_path_below_the_prefix_for_ordinary_keys(key: str, rel: str) -> None:
    assert safe_key(key, "data/") == rel


@pytest.mark.parametrize(
    ("rel", "problem"),
    [
        ("", "empty_segment"),
        ("a/../../etc/passwd", "dot_segment"),
        ("../x", "dot_segment"),
        ("..", "dot_segment"),
        ("a/./b", "dot_segment"),
        ("a/...", "dot_segment"),
        ("/abs", "absolute"),
        ("//abs", "absolute"),
        ("a//b", "empty_segment"),
        ("a/", "empty_segment"),
        ("x\\y", "backslash"),
        ("..\\x", "backslash"),
        ("nul\x00x", "control_character"),
        ("ctl\x01x", "control_character"),
        ("line\nbreak", "control_character"),
        ("tab\tx", "control_character"),
        ("del\x7fx", "control_character"),
        ("c1\x85x", "control_character"),
        ("rtl\u202egpj.exe", "control_character"),
        ("zero\u200bwidth", "control_character"),
        ("bom\ufeffx", "control_character"),
        ("line\u2028sep", "control_character"),
        ("%2e%2e/x", "encoded_separator"),
        ("%2E%2E/x", "encoded_separator"),
        ("%2e/x", "encoded_separator"),
        ("a%2Fb", "encoded_separator"),
        ("a%2f..%2fb", "encoded_separator"),
        ("a%5cb", "encoded_separator"),
        ("%252e%252e/x", "encoded_separator"),
        ("x%00y", "control_character"),
        ("x%0Ay", "control_character"),
        ("%ef%bc%8e%ef%bc%8e/x", "unicode_lookalike"),  # percent-encoded fullwidth dots
        ("\uff0e\uff0e/x", "unicode_lookalike"),  # two fullwidth full stops
        ("\u2025/x", "unicode_lookalike"),  # two dot leader
        ("\ufe52\ufe52/x", "unicode_lookalike"),  # small full stops
        ("\u3002\u3002/x", "unicode_lookalike"),  # ideographic full stops
        ("a\u2215b", "unicode_lookalike"),  # division slash
        ("a\u2044b", "unicode_lookalike"),  # fraction slash
        ("a\uff0fb", "unicode_lookalike"),  # fullwidth solidus
        ("a\uff3cb", "unicode_lookalike"),  # fullwidth reverse solidus
        ("a\ufe68b", "unicode_lookalike"),  # small reverse solidus
        ("a\u29f8b", "unicode_lookalike"),  # big solidus
        ("cafe\u0301.csv", "not_nfc"),  # e + combining acute: NFD twin of café.csv
        ("\u212bngstrom", "not_nfc"),  # Angstrom sign, NFC is Å
        ("bad\udcffname", "non_utf8_name"),
        ("n" * 256, "name_too_long"),
        ("/".join(["d" * 200] * 6), "name_too_long"),
    ],
)
def test_check_key_refuses_hostile_keys_with_the_reason(rel: str, problem: str) -> None:
    verdict = check_key("data/" + rel, "data/")
    assert isinstance(verdict, KeyRejection), f"{rel!r} accepted as {verdict!r}"
    assert verdict.problem == problem, verdict.detail
    assert verdict.detail


def test_check_key_refuses_keys_outside_the_prefix() -> None:
    assert check_key("datax/a.csv", "data/") == KeyRejection("outside_prefix", "key is not under the prefix 'data/'")
    assert isinstance(check_key("data", "data/"), KeyRejection)


def test_safe_key_raises_unreadable_data_error_naming_the_key_printably() -> None:
    with pytest.raises(UnreadableDataError) as info:
        safe_key("data/evil\x1b[31m/x", "data/")
    message = str(info.value)
    assert "\x1b" not in message
    assert "\\x1b" in message
    assert "control_character" in message


_PIECES = [
    "a",
    "b",
    "é",
    "e\u0301",
    ".",
    "..",
    "/",
    "//",
    "\\",
    "%",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%25",
    "%5c",
    "%00",
    "\uff0e",  # fullwidth full stop
    "\uff0f",  # fullwidth solidus
    "\u2215",  # division slash
    "\u2044",  # fraction slash
    "\u2025",  # two dot leader
    "\u3002",  # ideographic full stop
    "\x00",
    "\n",
    "\u202e",
    "\u200b",
    " ",
    "~",
    "-",
    "_",
    "ｶ",
    "x" * 40,
]


def _generated_keys(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n):
        yield "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 12)))


def test_every_accepted_key_stays_inside_any_folder_it_is_joined_to(tmp_path: Path) -> None:
    base = tmp_path / "root"
    base.mkdir()
    real_base = os.path.realpath(base)
    accepted = 0
    for key in _generated_keys(30_000, seed=5):
        verdict = check_key("p/" + key, "p/")
        if isinstance(verdict, KeyRejection):
            continue
        accepted += 1
        rel = verdict
        resolved = os.path.realpath(os.path.join(base, rel))
        assert resolved.startswith(real_base + os.sep), (key, resolved)
        # The path is its own canonical form: nothing a normaliser could fold into another path.
        assert os.path.normpath(rel) == rel, key
        assert unicodedata.normalize("NFC", rel) == rel
        assert all(part not in ("", ".", "..") for part in rel.split("/"))
        assert "\\" not in rel and "\x00" not in rel
        assert len(rel.encode("utf-8")) <= 1024
    assert accepted > 1000, "the generator should also produce many acceptable keys"


# --- entries_from_page and error messages (pure) ------------------------------------------------


def test_entries_from_page_skips_placeholders_and_reports_hostile_keys_in_place() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    root = BucketRoot("s3", "bkt", "data/")
    page = [
        {"Key": "data/", "Size": 0, "ETag": '"d41d8cd98f00b204e9800998ecf8427e"', "LastModified": when},
        {"Key": "data/a.csv", "Size": 3, "ETag": '"e1"', "LastModified": when},
        {"Key": "data/a/../../x", "Size": 1, "ETag": '"e2"', "LastModified": when},
        {"Key": "data/sub/", "Size": 0, "ETag": '"e3"', "LastModified": when},
        {"Key": "data/odd/", "Size": 5, "ETag": '"e4"', "LastModified": when},
        {"Key": "data/v?versionId=3", "Size": 1, "ETag": '"e5"', "LastModified": when},
        {"Key": "data/sub/b.csv", "Size": 7, "ETag": '"e6"', "LastModified": when},
    ]
    items = list(entries_from_page(page, root))
    assert items == [
        ObjectEntry("a.csv", "data/a.csv", 3, '"e1"', when),
        ObjectRejection("data/a/../../x", "dot_segment", items[1].detail),  # type: ignore[union-attr]
        ObjectRejection("data/odd/", "empty_segment", items[2].detail),  # type: ignore[union-attr]
        ObjectRejection("data/v?versionId=3", "unaddressable", items[3].detail),  # type: ignore[union-attr]
        ObjectEntry("sub/b.csv", "data/sub/b.csv", 7, '"e6"', when),
    ]
    assert items[0].mtime_ns == int(when.timestamp()) * 1_000_000_000  # type: ignore[union-attr]


def _client_error(code: str, status: int, operation: str = "ListObjectsV2") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} message"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


@pytest.mark.parametrize(
    ("exc", "key", "error", "words"),
    [
        (_client_error("NoSuchBucket", 404), None, SourceError, "does not exist"),
        (_client_error("AccessDenied", 403), None, SourceError, "access denied"),
        (_client_error("InvalidAccessKeyId", 403), None, SourceError, "access denied"),
        (_client_error("SlowDown", 503), None, SourceError, "throttling"),
        (_client_error("ServiceUnavailable", 503), None, SourceError, "throttling"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/"), None, SourceError, "cannot reach"),
        (NoCredentialsError(), None, SourceError, "no credentials"),
        (_client_error("NoSuchKey", 404, "GetObject"), "data/a.csv", UnreadableDataError, "disappeared"),
        (_client_error("PreconditionFailed", 412, "GetObject"), "data/a.csv", UnreadableDataError, "changed"),
        (_client_error("AccessDenied", 403, "GetObject"), "data/a.csv", UnreadableDataError, "s3:GetObject"),
        (_client_error("SlowDown", 503, "GetObject"), "data/a.csv", SourceError, "throttling"),
        (_client_error("NoSuchBucket", 404, "GetObject"), "data/a.csv", SourceError, "does not exist"),
    ],
)
def test_failures_become_our_errors_with_what_to_do(
    exc: BaseException, key: str | None, error: type[Exception], words: str
) -> None:
    from s3fs.errors import translate_boto_error  # type: ignore[import-untyped]

    root = BucketRoot("s3", "bkt", "data/")
    for raised in (exc, translate_boto_error(exc)):  # as botocore raises it, and as s3fs wraps it
        ours = failure_error(raised, root, "http://127.0.0.1:9", "list", key)
        assert type(ours) is error
        assert words in str(ours)


def test_describe_endpoint_drops_user_password_and_query() -> None:
    assert describe_endpoint("http://AKIA:s3cr3t@127.0.0.1:9000/path?X-Amz-Signature=abc") == (
        "http://127.0.0.1:9000/path"
    )
    assert describe_endpoint(None, "eu-west-1") == "the AWS S3 endpoint of eu-west-1"


def test_make_filesystem_builds_s3_clients_only_and_refuses_half_credentials() -> None:
    with pytest.raises(ConfigError, match=r"\[gcs\] settings"):
        make_filesystem(parse_root("gs://bucket/x"))
    with pytest.raises(ConfigError, match=r"\[azure\] settings"):
        make_filesystem(parse_root("az://container/x"))
    with pytest.raises(ConfigError, match="both"):
        make_filesystem(parse_root("s3://bucket/x"), access_key_id="AKIA")


# --- against the server: listing, hashing, reading --------------------------------------------


def test_uploaded_object_is_listed_with_size_etag_and_the_hash_of_its_bytes(
    s3_endpoint: str, bucket: str, s3: Any, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    put = s3.put_object(Bucket=bucket, Key="data/part-0.bin", Body=data)
    s3.put_object(Bucket=bucket, Key="data/", Body=b"")  # a console's folder placeholder
    s3.put_object(Bucket=bucket, Key="data2/not-mine.bin", Body=b"x")  # shares the prefix's first letters
    root = parse_root(f"s3://{bucket}/data")
    fs = _fs(s3_endpoint, root)
    check_root(fs, root)

    items = list(list_prefix(fs, root))
    assert [type(i) for i in items] == [ObjectEntry]
    entry = items[0]
    assert isinstance(entry, ObjectEntry)
    assert (entry.rel_path, entry.key, entry.size, entry.etag) == (
        "part-0.bin",
        "data/part-0.bin",
        len(data),
        put["ETag"],
    )
    assert abs(entry.last_modified - datetime.now(UTC)) < timedelta(minutes=2)

    s3.put_object(Bucket=bucket, Key="data/empty.csv", Body=b"")
    [empty] = [e for e in list_prefix(fs, root) if isinstance(e, ObjectEntry) and e.rel_path == "empty.csv"]
    (tmp_path / "empty.csv").write_bytes(b"")
    assert empty.size == 0
    assert hash_object(fs, root, empty.key, etag=empty.etag) == hash_file(tmp_path / "empty.csv")[0]

    local = tmp_path / "part-0.bin"
    local.write_bytes(data)
    digest = hash_object(fs, root, entry.key, etag=entry.etag, chunk=64 * 1024)
    assert digest == hash_file(local)[0] == xxhash.xxh3_128_hexdigest(data)


def test_tables_are_read_by_pyarrow_straight_from_the_object(s3_endpoint: str, bucket: str, s3: Any) -> None:
    table = pa.table({"id": list(range(1000)), "name": [f"n{i}" for i in range(1000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=100)
    s3.put_object(Bucket=bucket, Key="t/rows.parquet", Body=sink.getvalue())
    s3.put_object(Bucket=bucket, Key="t/rows.csv", Body=b"id,name\n1,a\n2,b\n")
    root = parse_root(f"s3://{bucket}/t")
    fs = _fs(s3_endpoint, root)
    entries = _entries(list(list_prefix(fs, root)))

    with open_object(fs, root, entries["rows.parquet"].key, etag=entries["rows.parquet"].etag) as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_rows == 1000
        assert parquet.metadata.num_row_groups == 10
        assert sum(batch.num_rows for batch in parquet.iter_batches(batch_size=250)) == 1000
    with open_object(fs, root, entries["rows.csv"].key) as f:
        assert pa_csv.read_csv(f).column("name").to_pylist() == ["a", "b"]


def test_multipart_upload_in_progress_is_not_listed_until_it_completes(s3_endpoint: str, bucket: str, s3: Any) -> None:
    part1 = os.urandom(5 * 1024 * 1024)  # S3's smallest part but the last
    part2 = os.urandom(1234)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="in/big.bin")
    etag1 = s3.upload_part(Bucket=bucket, Key="in/big.bin", UploadId=upload["UploadId"], PartNumber=1, Body=part1)
    root = parse_root(f"s3://{bucket}/in/")
    fs = _fs(s3_endpoint, root)
    assert list(list_prefix(fs, root)) == []

    etag2 = s3.upload_part(Bucket=bucket, Key="in/big.bin", UploadId=upload["UploadId"], PartNumber=2, Body=part2)
    assert list(list_prefix(fs, root)) == []
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="in/big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag1["ETag"]}, {"PartNumber": 2, "ETag": etag2["ETag"]}]},
    )
    [entry] = list(list_prefix(fs, root))
    assert isinstance(entry, ObjectEntry)
    assert entry.size == len(part1) + len(part2)
    assert entry.etag.endswith('-2"')  # a multipart ETag is not the MD5 of the bytes: only a change token
    assert hash_object(fs, root, entry.key, etag=entry.etag) == xxhash.xxh3_128_hexdigest(part1 + part2)


def test_overwrite_changes_the_etag_and_reads_pinned_to_the_old_etag_fail(
    s3_endpoint: str, bucket: str, s3: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="o/a.csv", Body=b"id\n1\n")
    root = parse_root(f"s3://{bucket}/o")
    fs = _fs(s3_endpoint, root)
    [before] = list(list_prefix(fs, root))
    assert isinstance(before, ObjectEntry)
    s3.put_object(Bucket=bucket, Key="o/a.csv", Body=b"id\n1\n2\n")
    [after] = list(list_prefix(fs, root))
    assert isinstance(after, ObjectEntry)
    assert after.etag != before.etag
    assert after.size == before.size + 2
    assert hash_object(fs, root, after.key, etag=after.etag) == xxhash.xxh3_128_hexdigest(b"id\n1\n2\n")

    with pytest.raises(UnreadableDataError, match="changed since it was listed"):
        hash_object(fs, root, before.key, etag=before.etag)
    with pytest.raises(UnreadableDataError, match="changed since it was listed"):
        open_object(fs, root, before.key, etag=before.etag)


def test_an_object_overwritten_while_it_is_read_fails_instead_of_mixing_versions(
    s3_endpoint: str, bucket: str, s3: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="w/a.bin", Body=b"a" * 300_000)
    root = parse_root(f"s3://{bucket}/w")
    fs = _fs(s3_endpoint, root)
    [entry] = list(list_prefix(fs, root))
    assert isinstance(entry, ObjectEntry)
    with open_object(fs, root, entry.key, etag=entry.etag, block_size=64 * 1024) as f:
        assert f.size == 300_000 and f.etag == entry.etag
        assert f.read(1000) == b"a" * 1000
        s3.put_object(Bucket=bucket, Key="w/a.bin", Body=b"b" * 300_000)
        f.seek(200_000)
        with pytest.raises(UnreadableDataError, match="changed since it was listed"):
            f.read(1000)


def test_deleted_keys_disappear_and_reading_them_says_they_vanished(s3_endpoint: str, bucket: str, s3: Any) -> None:
    for name in ("a.csv", "b.csv", "c/d.csv"):
        s3.put_object(Bucket=bucket, Key=f"del/{name}", Body=name.encode())
    root = parse_root(f"s3://{bucket}/del")
    fs = _fs(s3_endpoint, root)
    assert sorted(_entries(list(list_prefix(fs, root)))) == ["a.csv", "b.csv", "c/d.csv"]
    s3.delete_object(Bucket=bucket, Key="del/b.csv")
    s3.delete_object(Bucket=bucket, Key="del/c/d.csv")
    assert sorted(_entries(list(list_prefix(fs, root)))) == ["a.csv"]
    with pytest.raises(UnreadableDataError, match="disappeared"):
        hash_object(fs, root, "del/b.csv")
    with pytest.raises(UnreadableDataError, match="disappeared"):
        open_object(fs, root, "del/b.csv")


def test_listing_2500_objects_fetches_one_page_at_a_time(s3_endpoint: str, bucket: str, s3: Any) -> None:
    keys = [f"many/{i // 500:02d}/obj-{i:05d}.bin" for i in range(2500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    root = parse_root(f"s3://{bucket}/many")
    fs = _fs(s3_endpoint, root)
    calls = _count_calls(fs, "ListObjectsV2")

    listing = list_prefix(fs, root, page_size=100)
    assert calls[0] == 0, "nothing is fetched before the first item is asked for"
    first = next(listing)
    assert isinstance(first, ObjectEntry)
    assert first.key == keys[0]
    assert calls[0] == 1, "the first entry arrives after one page, before the rest is fetched"
    for _ in range(99):
        next(listing)
    assert calls[0] == 1
    next(listing)
    assert calls[0] == 2
    rest = list(listing)
    assert calls[0] == 25
    assert [e.key for e in [first, *rest]][:1] + [e.key for e in rest][-1:] == [keys[0], keys[-1]]
    assert len(rest) == 2500 - 101

    # Key order is the UTF-8 byte order the manifest uses; start_after resumes after a key.
    resumed = [e.key for e in list_prefix(fs, root, start_after=keys[1799], page_size=1000)]
    assert resumed == keys[1800:]
    assert calls[0] == 26


def test_hashing_a_large_object_holds_only_a_chunk_in_memory(s3_endpoint: str, bucket: str, s3: Any) -> None:
    data = os.urandom(24 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big/blob.bin", Body=data)
    expected = xxhash.xxh3_128_hexdigest(data)
    del data
    root = parse_root(f"s3://{bucket}/big")
    fs = _fs(s3_endpoint, root)
    [entry] = list(list_prefix(fs, root))
    assert isinstance(entry, ObjectEntry)
    hash_object(fs, root, entry.key, chunk=256 * 1024)  # warm up: connection pool, imports
    tracemalloc.start()
    try:
        digest = hash_object(fs, root, entry.key, etag=entry.etag, chunk=256 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == expected
    assert peak < 6 * 1024 * 1024, f"peak {peak} bytes while hashing a 24 MiB object"


def test_hostile_keys_in_the_bucket_are_reported_not_listed(s3_endpoint: str, bucket: str, s3: Any) -> None:
    hostile = {
        "h/a/../../etc/passwd": "dot_segment",
        "h//abs": "absolute",
        "h/%2e%2e/x": "encoded_separator",
        "h/x\\y": "backslash",
        "h/\uff0e\uff0e/z": "unicode_lookalike",
        "h/a\u2215b": "unicode_lookalike",
        "h/a//b": "empty_segment",
        "h/ctl\x01x": "control_character",
        "h/cafe\u0301.csv": "not_nfc",
        "h/x?versionId=1": "unaddressable",
    }
    fine = ["h/ok.csv", "h/caf\u00e9.csv", "h/sub/ok.parquet"]
    for key in [*hostile, *fine]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    s3.put_object(Bucket=bucket, Key="h/sub/", Body=b"")  # a folder placeholder: skipped silently
    root = parse_root(f"s3://{bucket}/h")
    fs = _fs(s3_endpoint, root)
    items = list(list_prefix(fs, root, page_size=3))
    assert sorted(_entries(items)) == sorted(k[2:] for k in fine)
    assert {key: r.problem for key, r in _rejections(items).items()} == hostile


def test_missing_bucket_is_a_source_error_saying_to_create_it(s3_endpoint: str, bucket: str) -> None:
    root = parse_root(f"s3://{bucket}-absent/x")
    fs = _fs(s3_endpoint, root)
    with pytest.raises(SourceError, match=r"does not exist.*create it"):
        check_root(fs, root)
    with pytest.raises(SourceError, match="does not exist"):
        list(list_prefix(fs, root))


# --- credentials and failures -----------------------------------------------------------------


def test_credentials_come_from_the_environment_by_default(s3_endpoint: str, bucket: str) -> None:
    root = parse_root(f"s3://{bucket}/x")
    fs = _fs(s3_endpoint, root)
    sent = _capture_authorization(fs)
    check_root(fs, root)
    assert sent and all(f"Credential={S3_TEST_ACCESS_KEY}/" in header for header in sent)


def test_credentials_come_from_a_shared_credentials_file_profile(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "credentials"
    credentials.write_text("[ingest]\naws_access_key_id = AKIAFROMPROFILEFILE1\naws_secret_access_key = from-file\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    root = parse_root(f"s3://{bucket}/x")
    fs = _fs(s3_endpoint, root, profile="ingest")
    sent = _capture_authorization(fs)
    check_root(fs, root)
    assert sent and all("Credential=AKIAFROMPROFILEFILE1/" in header for header in sent)


def test_explicit_credentials_win_and_their_secret_is_never_shown(s3_endpoint: str, bucket: str) -> None:
    root = parse_root(f"s3://{bucket}/x")
    fs = _fs(s3_endpoint, root, access_key_id="AKIAEXPLICIT00000001", secret_access_key=SecretStr("explicit-s3cret"))
    sent = _capture_authorization(fs)
    check_root(fs, root)
    assert sent and all("Credential=AKIAEXPLICIT00000001/" in header for header in sent)
    assert "explicit-s3cret" not in repr(fs)


def test_no_credentials_anywhere_is_a_source_error_naming_the_chain(
    s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    root = parse_root(f"s3://{bucket}/x")
    fs = _fs(s3_endpoint, root, max_attempts=1)
    with pytest.raises(SourceError, match=r"no credentials.*AWS_ACCESS_KEY_ID.*AWS_PROFILE.*role"):
        list(list_prefix(fs, root))


@pytest.fixture(scope="module")
def auth_s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second server that checks IAM credentials and policies after its first 4 requests."""
    directory = tmp_path_factory.mktemp("s3-auth")
    # 4: the start-up probe (GET /) is the first request the server takes without checking.
    endpoint = s3_server.start(directory, env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        yield endpoint
    finally:
        s3_server.stop(directory)


def test_access_denied_is_a_source_error_saying_which_permissions_to_grant(
    auth_s3_endpoint: str, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The 3 requests the server takes without checking: a user, a key of that user (with no policy), a bucket.
    iam = boto3.client("iam", endpoint_url=auth_s3_endpoint)
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.close()
    admin = boto3.client("s3", endpoint_url=auth_s3_endpoint)
    admin.create_bucket(Bucket=bucket)
    admin.close()

    root = parse_root(f"s3://{bucket}/data")
    secret = key["SecretAccessKey"]
    fs = _fs(
        auth_s3_endpoint, root, access_key_id=key["AccessKeyId"], secret_access_key=SecretStr(secret), max_attempts=1
    )
    caplog.set_level("DEBUG")
    with pytest.raises(SourceError) as info:
        check_root(fs, root)
    assert "access denied" in str(info.value)
    assert "s3:ListBucket" in str(info.value)
    unknown = _fs(auth_s3_endpoint, root, max_attempts=1)  # the environment's key is unknown to this server
    with pytest.raises(SourceError, match=r"access denied.*InvalidAccessKeyId"):
        list(list_prefix(unknown, root))
    assert secret not in str(info.value)
    assert secret not in caplog.text
    assert S3_TEST_SECRET_KEY not in caplog.text


def test_server_stopped_and_restarted_gives_source_errors_then_listing_works_again(tmp_path: Path, bucket: str) -> None:
    directory = tmp_path / "server"
    endpoint = s3_server.start(directory)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="r/a.csv", Body=b"1")
        root = parse_root(f"s3://{bucket}/r")
        fs = _fs(endpoint, root, max_attempts=1, connect_timeout=1.0)
        assert list(_entries(list(list_prefix(fs, root)))) == ["a.csv"]

        s3_server.stop(directory)
        with pytest.raises(SourceError, match=rf"cannot reach {re.escape(endpoint)}.*the server runs"):
            list(list_prefix(fs, root))
        with pytest.raises(SourceError, match="cannot reach"):
            hash_object(fs, root, "r/a.csv")

        assert s3_server.start(directory) == endpoint  # same port; the server's state is gone
        with pytest.raises(SourceError, match="does not exist"):
            list(list_prefix(fs, root))
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="r/b.csv", Body=b"2")
        client.close()
        assert list(_entries(list(list_prefix(fs, root)))) == ["b.csv"]
        assert hash_object(fs, root, "r/b.csv") == xxhash.xxh3_128_hexdigest(b"2")
    finally:
        s3_server.stop(directory)


def test_unreachable_endpoint_is_a_source_error_naming_it_without_credentials(
    bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"http://127.0.0.1:{_unused_port()}"
    root = parse_root(f"s3://{bucket}/x")
    caplog.set_level("DEBUG")
    fs = make_filesystem(
        root,
        endpoint_url=endpoint,
        access_key_id="AKIAUNREACHABLE00001",
        secret_access_key=SecretStr("unreachable-s3cret"),
        max_attempts=2,
        connect_timeout=1.0,
    )
    with pytest.raises(SourceError) as info:
        check_root(fs, root)
    message = str(info.value)
    assert f"cannot reach {endpoint}" in message
    assert "unreachable-s3cret" not in caplog.text
    assert "AKIAUNREACHABLE00001" not in caplog.text, "botocore's DEBUG header lines are kept out"
    for secret in ("unreachable-s3cret", "AKIAUNREACHABLE00001"):
        assert secret not in message


def test_endpoint_url_with_a_user_or_password_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        make_filesystem(parse_root("s3://bucket/x"), endpoint_url="http://AKIAINURL:url-s3cret@127.0.0.1:9000")
    assert "http://127.0.0.1:9000" in str(info.value)
    assert "url-s3cret" not in str(info.value) and "AKIAINURL" not in str(info.value)
    with pytest.raises(ConfigError, match="http"):
        make_filesystem(parse_root("s3://bucket/x"), endpoint_url="127.0.0.1:9000")


def _unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the server script ------------------------------------------------------------------------


def test_s3_server_script_starts_answers_and_stops_from_the_command_line(tmp_path: Path) -> None:
    script = str(REPO / "scripts" / "s3_server.py")
    directory = tmp_path / "cli"
    started = subprocess.run(
        [sys.executable, script, "start", "--dir", str(directory)], capture_output=True, text=True, check=True
    )
    endpoint = started.stdout.strip()
    try:
        assert endpoint.startswith("http://127.0.0.1:")
        assert s3_server.answers(endpoint)
        ensured = subprocess.run(
            [sys.executable, script, "ensure", "--endpoint", endpoint, "--dir", str(directory)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "answers" in ensured.stderr
    finally:
        subprocess.run([sys.executable, script, "stop", "--dir", str(directory)], check=True)
    assert not s3_server.answers(endpoint)
    assert not (directory / "server.pid").exists()


def test_objects_written_concurrently_with_a_listing_never_crash_it(s3_endpoint: str, bucket: str, s3: Any) -> None:
    for i in range(300):
        s3.put_object(Bucket=bucket, Key=f"c/{i:04d}.csv", Body=b"x")
    root = parse_root(f"s3://{bucket}/c")
    fs = _fs(s3_endpoint, root)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            s3.put_object(Bucket=bucket, Key=f"c/{i % 300:04d}.csv", Body=uuid.uuid4().bytes)
            s3.delete_object(Bucket=bucket, Key=f"c/{(i + 150) % 300:04d}.csv")
            i += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(5):
            items = list(list_prefix(fs, root, page_size=50))
            assert all(isinstance(i, ObjectEntry) for i in items)
            keys = [i.key for i in items]
            assert keys == sorted(keys) and len(set(keys)) == len(keys)
    finally:
        stop.set()
        writer.join()
