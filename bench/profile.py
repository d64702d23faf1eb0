"""Profiling throughput: ``daemon.tables.profile_file`` on Parquet, against whylogs in the same run.

Writes 1,000,000 rows x 20 columns (10 float64, 5 int64, 5 categorical strings of 50 values;
seeded) to a Parquet file in a temp folder, then profiles it

* with Strandline (``profile_file``: count, nulls, min/max, mean/stddev, KLL quantiles, frequent
  items and HLL distinct counts), in a child process of this Python, and
* with whylogs (``pandas.read_parquet`` then ``whylogs.log(df)``), in a child process of
  bench/.venv-whylogs (``bash bench/setup_peers.sh`` creates it),

and reports rows/s, wall time and peak RSS (the child's VmHWM) of each, and the ratio.
Strandline's time always includes reading the file; whylogs' is given without and with it.
Each child reports the time of the work only (imports excluded). Strandline's child profiles the
file --repeat times: the first call is cold (like whylogs' one call in a fresh process), the best
of the others warm (the daemon's steady state, profiling file after file).

``--rss-2gib`` instead writes a Parquet file of about 2 GiB (same 20 columns, 1 Mi-row row
groups) and reports the peak RSS of profiling it: the target is under 1 GiB.

Usage: .venv/bin/python bench/profile.py [--rows N] [--repeat N] [--json] [--rss-2gib] [--keep]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import Report, fresh_tempdir, note, parser, remove_tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WHYLOGS_PYTHON = HERE / ".venv-whylogs" / "bin" / "python"
CATEGORIES = [f"category_{i:02d}" for i in range(50)]


# -- data -----------------------------------------------------------------------------------


def _chunk(rows: int, seed: int) -> Any:
    """A pyarrow table of ``rows`` rows: f0..f9 float64, i0..i4 int64, c0..c4 categorical."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for i in range(10):
        values = rng.normal(i * 10.0, 1.0 + i, rows)
        values[rng.random(rows) < 0.01] = np.nan  # a few NaNs, as real data has
        columns[f"f{i}"] = pa.array(values, mask=rng.random(rows) < 0.02)
    for i in range(5):
        columns[f"i{i}"] = pa.array(rng.integers(-(2**40), 2**40, rows))
    dictionary = pa.array(CATEGORIES)
    for i in range(5):
        weights = rng.random(len(CATEGORIES)) ** 3
        indices = rng.choice(len(CATEGORIES), rows, p=weights / weights.sum()).astype("int8")
        columns[f"c{i}"] = pa.DictionaryArray.from_arrays(pa.array(indices), dictionary)
    return pa.table(columns)


def write_table(path: Path, rows: int, seed: int) -> None:
    import pyarrow.parquet as pq

    pq.write_table(_chunk(rows, seed), path)


def write_large(path: Path, target_bytes: int, seed: int, chunk_rows: int = 1 << 20) -> int:
    """Row groups of ``chunk_rows`` rows until the file holds ``target_bytes``; returns the rows."""
    import pyarrow.parquet as pq

    rows = 0
    first = _chunk(chunk_rows, seed)
    with pq.ParquetWriter(path, first.schema) as writer:
        n = 0
        while n == 0 or path.stat().st_size < target_bytes:  # each row group reaches the file as written
            writer.write_table(first if n == 0 else _chunk(chunk_rows, seed + n), row_group_size=chunk_rows)
            rows += chunk_rows
            n += 1
    return rows


# -- the children ---------------------------------------------------------------------------

# Peak RSS is the child's VmHWM: unlike ru_maxrss, which Linux carries across exec (a child
# would report this parent's peak, data generation included), it starts afresh in the new program.
_HWM = """
def hwm_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
"""

STRANDLINE_CHILD = (
    _HWM
    + """
import json, sys, time
sys.path.insert(0, {repo!r})
from daemon.tables import profile_file
baseline = hwm_kib()
walls = []
for _ in range({runs}):
    started = time.perf_counter()
    schema, profile = profile_file({path!r}, "parquet")
    walls.append(time.perf_counter() - started)
print(json.dumps({{"cold": walls[0], "warm": min(walls[1:], default=None), "rows": profile.rows,
    "columns": len(schema.fields), "profile_json_bytes": len(profile.model_dump_json()),
    "baseline_kib": baseline, "peak_kib": hwm_kib()}}))
"""
)

WHYLOGS_CHILD = (
    _HWM
    + """
import json, logging, time, warnings
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
import pandas as pd
import whylogs
baseline = hwm_kib()
started = time.perf_counter()
df = pd.read_parquet({path!r})
read = time.perf_counter() - started
started = time.perf_counter()
view = whylogs.log(df).view()
log = time.perf_counter() - started
assert view.get_column("f0").to_summary_dict()["counts/n"] == len(df)
print(json.dumps({{"read": read, "log": log, "rows": len(df), "baseline_kib": baseline, "peak_kib": hwm_kib()}}))
"""
)


def run_child(python: Path | str, code: str, timeout: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"{python} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def best(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return min(runs, key=lambda r: float(r[key]))


def mib(kib: int) -> float:
    return kib / 1024


# -- the benchmarks -------------------------------------------------------------------------


def compare(report: Report, folder: Path, rows: int, seed: int, repeat: int, whylogs_repeat: int) -> None:
    path = folder / "table.parquet"
    note(f"writing {rows:,} rows x 20 columns to {path} …")
    write_table(path, rows, seed)
    report.params.update(rows=rows, columns=20, file_mib=round(path.stat().st_size / 2**20, 1), repeat=repeat)

    # One process profiles the file `repeat` times: the first call is cold (a fresh process, as
    # whylogs is measured), the others warm, as in the long-running daemon profiling file after file.
    ours = run_child(sys.executable, STRANDLINE_CHILD.format(repo=str(REPO), path=str(path), runs=repeat), 600)
    assert ours["rows"] == rows
    note(f"strandline: cold {ours['cold']:.3f} s, warm {ours['warm']:.3f} s, peak RSS {mib(ours['peak_kib']):.0f} MiB")
    report.add("strandline wall, warm", ours["warm"], "s", "≤ 1 s", ours["warm"] <= 1.0)
    report.add("strandline wall, cold", ours["cold"], "s")
    report.add("strandline rows/s, warm", round(rows / ours["warm"]), "rows/s")
    report.add("strandline rows/s, cold", round(rows / ours["cold"]), "rows/s")
    report.add("strandline peak RSS", round(mib(ours["peak_kib"])), "MiB")
    report.add("strandline RSS before profiling", round(mib(ours["baseline_kib"])), "MiB")
    report.add("profile JSON", ours["profile_json_bytes"], "bytes")

    if not WHYLOGS_PYTHON.exists():
        note(f"{WHYLOGS_PYTHON} not found: run `bash bench/setup_peers.sh` for the whylogs comparison")
        report.add("whylogs", "not installed")
        return
    theirs_runs = []
    for i in range(whylogs_repeat):
        theirs_runs.append(run_child(WHYLOGS_PYTHON, WHYLOGS_CHILD.format(path=str(path)), 1800))
        r = theirs_runs[-1]
        note(
            f"whylogs run {i + 1}: read {r['read']:.2f} s + log {r['log']:.2f} s, peak RSS {mib(r['peak_kib']):.0f} MiB"
        )
    theirs = best(theirs_runs, "log")
    report.add("whylogs read_parquet", theirs["read"], "s")
    report.add("whylogs log", theirs["log"], "s")
    report.add("whylogs rows/s (log)", round(rows / theirs["log"]), "rows/s")
    report.add("whylogs rows/s (read + log)", round(rows / (theirs["read"] + theirs["log"])), "rows/s")
    report.add("whylogs peak RSS", round(mib(max(r["peak_kib"] for r in theirs_runs))), "MiB")
    for state in ("warm", "cold"):
        ratio = theirs["log"] / ours[state]
        report.add(f"speed-up vs whylogs log, {state}", ratio, "x", "≥ 20x", ratio >= 20)
    report.add("speed-up vs whylogs read + log, cold", (theirs["read"] + theirs["log"]) / ours["cold"], "x")


def rss_2gib(report: Report, folder: Path, seed: int, gib: float) -> None:
    path = folder / "large.parquet"
    note(f"writing a ~{gib:g} GiB Parquet file to {path} (a minute or so) …")
    started = time.perf_counter()
    rows = write_large(path, int(gib * 2**30), seed)
    note(f"wrote {rows:,} rows, {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - started:.0f} s")
    report.params.update(rows=rows, columns=20, file_gib=round(path.stat().st_size / 2**30, 2), row_group_rows=1 << 20)
    result = run_child(sys.executable, STRANDLINE_CHILD.format(repo=str(REPO), path=str(path), runs=1), 1800)
    assert result["rows"] == rows
    peak = mib(result["peak_kib"])
    report.add("profile wall", result["cold"], "s")
    report.add("rows/s", round(rows / result["cold"]), "rows/s")
    report.add("MiB/s of Parquet", path.stat().st_size / 2**20 / result["cold"], "MiB/s")
    report.add("peak RSS", round(peak), "MiB", "< 1024 MiB", peak < 1024)
    report.add("RSS before profiling", round(mib(result["baseline_kib"])), "MiB")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the comparison table (default 1,000,000)")
    p.add_argument(
        "--repeat", type=int, default=4, help="Strandline runs in one process: the first cold, the best other warm"
    )
    p.add_argument("--whylogs-repeat", type=int, default=1, help="whylogs runs (default 1: ~20-35 s each)")
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--rss-2gib", action="store_true", help="peak RSS of profiling a ~2 GiB Parquet file instead")
    p.add_argument("--gib", type=float, default=2.0, help="size of the --rss-2gib file (default 2)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder with the data")
    args = p.parse_args()
    if args.repeat < 2:
        p.error("--repeat must be at least 2 (one cold run, then warm ones)")

    folder = fresh_tempdir("profile")
    try:
        if args.rss_2gib:
            report = Report("profile: peak RSS of profile_file on a large Parquet file")
            rss_2gib(report, folder, args.seed, args.gib)
        else:
            report = Report("profile: profile_file vs whylogs on Parquet")
            compare(report, folder, args.rows, args.seed, args.repeat, args.whylogs_repeat)
    finally:
        if args.keep:
            note(f"data kept in {folder}")
        else:
            remove_tree(folder)
    report.emit(args.json)


if __name__ == "__main__":
    main()
