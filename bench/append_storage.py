"""Content store growth for appends: ten 1 MiB appends to a 200 MiB CSV, each version put.

How it is measured
  * A CSV of ``--base-mib`` (default 200 MiB) is written into a fresh temp folder: rows of an
    id, a timestamp, a random name, a float, a category and an int (every row different, so the
    chunker finds no repeats inside the file), with ``daemon.content_store.ContentStore`` in
    the same folder at its default settings (8 MiB threshold, FastCDC 16/64/256 KiB).
  * Version 0 is put; then ``--appends`` times (default 10) ``--append-mib`` (default 1 MiB) of
    new rows are appended in place, the file is hashed (``daemon.fingerprint.hash_file``) and put.
  * New store bytes = growth of ``stats().bytes`` (chunks + pages + recipes, apparent sizes)
    over the appends; the ratio is that over the bytes appended. Target: <= 1.2.
  * The same again with the writer rewriting the whole file each time (new file + rename, as
    pandas ``to_csv`` to a temp name would): the store should not care how the bytes got there.
  * With ``--dvc``: the same base file and the same appends in a ``dvc init --no-scm`` repo,
    ``dvc add`` after each; DVC's new cache bytes (apparent sizes under ``.dvc/cache``) over
    the bytes appended (DVC keeps a whole copy of each version: ~ (base + appends) each time).
  * Also: chunker throughput (``daemon.chunking.chunk_boundaries`` over the base file, page
    cache warm, best of 3; target >= 300 MiB/s), the first put (every chunk new: read, hash,
    write, fsync each chunk) and reading a version back (``iter_content``, every chunk checked).

Run: .venv/bin/python bench/append_storage.py [--base-mib 200] [--appends 10] [--append-mib 1] [--dvc [DVC]] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import _common as c

if TYPE_CHECKING:
    from daemon.content_store import ContentStore

MiB = 1024 * 1024
TARGET_RATIO = 1.2
TARGET_CHUNK_MIBS = 300.0
CATEGORIES = ("alpha", "beta", "gamma", "delta", "epsilon")


def csv_rows(rng: random.Random, start: int, size: int) -> tuple[bytes, int]:
    """Rows numbered from ``start`` adding up to at least ``size`` bytes; the bytes and the next row number."""
    out: list[str] = []
    total = 0
    row = start
    while total < size:
        line = (
            f"{row},2024-{1 + row % 12:02d}-{1 + row % 28:02d}T{row % 24:02d}:{row % 60:02d}:{row * 7 % 60:02d},"
            f"name{rng.randrange(10**7)},{rng.random() * 1000:.6f},{CATEGORIES[row % 5]},{rng.randrange(100000)}\n"
        )
        out.append(line)
        total += len(line)
        row += 1
    return "".join(out).encode(), row


def write_base(path: Path, size: int, rng: random.Random) -> int:
    row = 0
    with open(path, "wb") as fh:
        fh.write(b"id,ts,name,value,category,score\n")
        written = 0
        while written < size:
            block, row = csv_rows(rng, row, min(8 * MiB, size - written))
            fh.write(block)
            written += len(block)
    return row


def append_blocks(appends: int, append_bytes: int) -> Iterator[bytes]:
    """The appended rows, the same bytes in every run (so Strandline and DVC see the same appends)."""
    rng = random.Random(2)
    row = 10**9
    for _ in range(appends):
        block, row = csv_rows(rng, row, append_bytes)
        yield block[:append_bytes]


def append(path: Path, block: bytes, rewrite: bool) -> None:
    """Append in place, or (``rewrite``) write old bytes + block to a new file and rename it over the old."""
    if rewrite:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh, open(path, "rb") as old:
            while piece := old.read(16 * MiB):
                fh.write(piece)
            fh.write(block)
        os.replace(tmp, path)
    else:
        with open(path, "ab") as fh:
            fh.write(block)


def tree_bytes(folder: Path) -> int:
    """Apparent size of every regular file under ``folder`` (as ``ContentStore.stats().bytes`` counts)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def dvc_appends(work: Path, base: Path, args: argparse.Namespace, dvc: Path, report: c.Report) -> None:
    """The same file and appends under DVC: ``dvc add`` after each, cache growth (DVC keeps whole files)."""
    import burst

    repo = work / "dvc-append"
    env = burst.init_dvc_repo(dvc, repo)
    path = repo / "append.csv"
    shutil.copyfile(base, path)
    os.sync()
    burst.time_dvc(dvc, repo, env, "add", "-q", path.name)
    cache = repo / ".dvc" / "cache"
    start = tree_bytes(cache)
    appended = 0
    add_times = []
    for block in append_blocks(args.appends, args.append_mib * MiB):
        appended += len(block)
        append(path, block, rewrite=False)
        add_times.append(burst.time_dvc(dvc, repo, env, "add", "-q", path.name))
    grown = tree_bytes(cache) - start
    report.add("dvc: bytes appended", appended, "B")
    report.add("dvc: new cache bytes", grown, "B")
    report.add("dvc: new cache bytes / appended", grown / appended, "")
    report.add("dvc: dvc add after an append, median", sorted(add_times)[len(add_times) // 2] * 1000, "ms")


def put(store: ContentStore, path: Path) -> tuple[str, float]:
    from daemon.fingerprint import hash_file

    digest, st = hash_file(path)
    t0 = time.perf_counter()
    store.put(path, digest, st.st_size)
    return digest, time.perf_counter() - t0


def run_appends(work: Path, base: Path, args: argparse.Namespace, rewrite: bool, report: c.Report) -> None:
    from daemon.content_store import ContentStore

    name = "rewrite" if rewrite else "append"
    appends, append_bytes = args.appends, args.append_mib * MiB
    store = ContentStore(work / f"store-{name}")
    path = work / f"{name}.csv"
    shutil.copyfile(base, path)
    os.sync()  # the timed put should not pay for flushing this setup's own writes
    digest, first_put = put(store, path)
    size = path.stat().st_size
    start = store.stats().bytes
    appended = 0
    put_times = []
    digests = [digest]
    for block in append_blocks(appends, append_bytes):
        appended += len(block)
        append(path, block, rewrite)
        digest, seconds = put(store, path)
        digests.append(digest)
        put_times.append(seconds)
    grown = store.stats().bytes - start
    ratio = grown / appended
    label = name
    report.add(f"{label}: bytes appended", appended, "B")
    report.add(f"{label}: new store bytes", grown, "B")
    report.add(f"{label}: new store bytes / appended", ratio, "", f"<= {TARGET_RATIO:g}", ratio <= TARGET_RATIO)
    report.add(f"{label}: put after an append, median", sorted(put_times)[len(put_times) // 2] * 1000, "ms")
    if not rewrite:
        report.add("first put (all chunks new)", size / first_put / MiB, "MiB/s")
        t0 = time.perf_counter()
        read = sum(len(part) for part in store.iter_content(digests[-1]))
        report.add("read back a version (checked)", read / (time.perf_counter() - t0) / MiB, "MiB/s")
        report.add(
            "store size / sum of version sizes",
            store.stats().bytes / (size * (appends + 1) + appended * (appends + 1) / 2),
            "",
        )


def chunk_throughput(path: Path) -> float:
    from daemon.chunking import chunk_boundaries

    size = path.stat().st_size
    best = 0.0
    for _ in range(3):
        with open(path, "rb", buffering=0) as fh:
            t0 = time.perf_counter()
            for _cut in chunk_boundaries(fh):
                pass
            best = max(best, size / (time.perf_counter() - t0) / MiB)
    return best


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--base-mib", type=int, default=200, help="size of the CSV before the appends (default 200)")
    p.add_argument("--appends", type=int, default=10, help="appends, each followed by a put (default 10)")
    p.add_argument("--append-mib", type=int, default=1, help="MiB per append (default 1)")
    p.add_argument(
        "--dvc",
        type=Path,
        nargs="?",
        const=Path(__file__).resolve().parent / ".venv-peers" / "bin" / "dvc",
        help="also measure DVC's cache growth for the same appends (dvc add after each); "
        "default executable bench/.venv-peers/bin/dvc",
    )
    args = p.parse_args()
    if args.dvc is not None and not args.dvc.exists():
        p.error(f"{args.dvc} not found: run `bash bench/setup_peers.sh` first")

    report = c.Report(
        "append_storage: content store growth for appends to a CSV (daemon.content_store)",
        {"base_mib": args.base_mib, "appends": args.appends, "append_mib": args.append_mib},
    )
    work = c.fresh_tempdir("append")
    try:
        base = work / "base.csv"
        c.note(f"writing a {args.base_mib} MiB CSV to {base} …")
        write_base(base, args.base_mib * MiB, random.Random(1))
        with open(base, "rb", buffering=0) as fh:  # page cache warm for the chunker figure
            while fh.read(16 * MiB):
                pass
        mibs = chunk_throughput(base)
        report.add(
            "chunker throughput (best of 3)", mibs, "MiB/s", f">= {TARGET_CHUNK_MIBS:g}", mibs >= TARGET_CHUNK_MIBS
        )
        for rewrite in (False, True):
            c.note(f"{'rewrites' if rewrite else 'appends'}: put version 0, then {args.appends} more …")
            run_appends(work, base, args, rewrite, report)
        if args.dvc is not None:
            c.note(f"DVC: dvc add version 0, then after each of {args.appends} appends …")
            dvc_appends(work, base, args, args.dvc, report)
    finally:
        c.remove_tree(work)
    report.emit(args.json)


if __name__ == "__main__":
    main()
