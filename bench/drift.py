"""Drift check: ``consumers.drift.compare`` on two profiles, against Evidently on the same two files.

Writes a reference and a current table of 1,000,000 rows x 20 columns each (10 float64, 5 int64,
5 categorical strings of 50 values, like bench/profile.py; seeded) to Parquet in a temp folder.
The current table is drawn afresh (another seed) from the reference's distributions except on
four columns, which the generator names: the mean of f2, f7 and i3 moves by 0.5 standard
deviations, and c1's category mix becomes half its own, half its reverse (Jensen-Shannon
distance ~0.28). Evidently's defaults (and Strandline's, which follow them) flag a column at a
normed Wasserstein distance or a Jensen-Shannon distance of 0.1, so the shifted columns are well
beyond the threshold and the others (sampling noise of a million rows) far below it.

Then, in child processes (imports not timed), each run:

* Evidently (bench/.venv-evidently, ``bash bench/setup_peers.sh``): ``pd.read_parquet`` of both
  files, ``Report([DataDriftPreset()], include_tests=True).run(current, reference)``, and the
  columns whose per-column drift test failed (``include_tests`` only adds Evidently's own verdict
  per column to the result; the scores are those of the default report);
* Strandline, end to end: ``daemon.tables.profile_file`` of both files, then ``compare`` with
  ``DriftSettings()`` defaults (--repeat times in one process: the first cold, like Evidently's
  one call in a fresh process, the best of the others warm);
* Strandline, compare only: a fresh process loads the two profiles from JSON (as the daemon has
  them in its catalog) and runs ``compare`` --compare-repeat times: first call, best and median.

Peak RSS is each child's VmHWM. Verdicts are the sets of flagged columns, checked against the
generator's set and across --runs runs (fresh processes on the same files). The scaling part
runs Strandline's side at each of --scale-rows to show that compare-only memory does not depend
on the row count (and profiling memory stays bounded).

Usage: .venv/bin/python bench/drift.py [--rows N] [--runs N] [--repeat N] [--compare-repeat N]
                                       [--scale-rows N,N] [--no-evidently] [--json] [--keep]
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import Report, fresh_tempdir, note, parser, remove_tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EVIDENTLY_PYTHON = HERE / ".venv-evidently" / "bin" / "python"
CATEGORIES = [f"category_{i:02d}" for i in range(50)]
SHIFT_STD = 0.5  # mean shift of the shifted numeric columns, in standard deviations
SHIFTED_NUMERIC = ("f2", "f7", "i3")
SHIFTED_CATEGORICAL = ("c1",)
INT_LOW, INT_HIGH = -(2**40), 2**40
MIX_SEED = 7000  # the category mixes: fixed, the same in both tables whatever --seed says


# -- data -----------------------------------------------------------------------------------


def category_mix(k: int, shifted: bool) -> Any:
    """Probabilities of the 50 categories of column c<k>; shifted: half the mix, half its reverse."""
    import numpy as np

    weights = np.random.default_rng(MIX_SEED + k).random(len(CATEGORIES)) ** 3
    weights /= weights.sum()
    return 0.5 * weights + 0.5 * weights[::-1] if shifted else weights


def make_table(rows: int, seed: int, shifted: frozenset[str] = frozenset()) -> Any:
    """f0..f9 float64 (normal, 1 % NaN, 2 % null), i0..i4 int64 (uniform), c0..c4 dictionary strings.

    Columns named in ``shifted`` get their mean moved by SHIFT_STD standard deviations (numbers)
    or their category mix changed (categories); every other column has the same distribution
    whatever ``shifted`` is. ``seed`` only chooses the draw.
    """
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for i in range(10):
        name, mean, std = f"f{i}", i * 10.0, 1.0 + i
        values = rng.normal(mean + (SHIFT_STD * std if name in shifted else 0.0), std, rows)
        values[rng.random(rows) < 0.01] = np.nan
        columns[name] = pa.array(values, mask=rng.random(rows) < 0.02)
    int_std = (INT_HIGH - INT_LOW) / math.sqrt(12)  # of the uniform distribution
    for i in range(5):
        name = f"i{i}"
        integers = rng.integers(INT_LOW, INT_HIGH, rows)
        if name in shifted:
            integers += int(SHIFT_STD * int_std)
        columns[name] = pa.array(integers)
    dictionary = pa.array(CATEGORIES)
    for k in range(5):
        name = f"c{k}"
        indices = rng.choice(len(CATEGORIES), rows, p=category_mix(k, name in shifted)).astype("int8")
        columns[name] = pa.DictionaryArray.from_arrays(pa.array(indices), dictionary)
    return pa.table(columns)


def generate(folder: Path, rows: int, seed: int) -> tuple[Path, Path, frozenset[str]]:
    """reference.parquet and current.parquet in ``folder``; returns their paths and the shifted columns."""
    import pyarrow.parquet as pq

    shifted = frozenset(SHIFTED_NUMERIC + SHIFTED_CATEGORICAL)
    reference, current = folder / "reference.parquet", folder / "current.parquet"
    pq.write_table(make_table(rows, seed), reference)
    pq.write_table(make_table(rows, seed + 1, shifted), current)
    return reference, current, shifted


def digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


# -- the children ---------------------------------------------------------------------------

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report this
# parent's peak (data generation included); VmHWM starts afresh in the new program.
_HWM = """
def hwm_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
"""

EVIDENTLY_CHILD = (
    _HWM
    + """
import json, logging, time, warnings
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
import evidently
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
baseline = hwm_kib()
started = time.perf_counter()
reference = pd.read_parquet({reference!r})
current = pd.read_parquet({current!r})
read = time.perf_counter() - started
started = time.perf_counter()
snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)
run = time.perf_counter() - started
result = snapshot.dict()
columns, count = {{}}, None
for metric in result["metrics"]:
    config = metric["config"]
    if config["type"].endswith(":ValueDrift"):
        columns[config["column"]] = {{"method": config.get("method"), "threshold": config.get("threshold"),
                                     "score": metric["value"], "drifted": None}}
    elif config["type"].endswith(":DriftedColumnsCount"):
        count = metric["value"]["count"]
for test in result["tests"]:
    params = test.get("metric_config", {{}}).get("params", {{}})
    if params.get("type", "").endswith(":ValueDrift"):
        columns[params["column"]]["drifted"] = test["status"] == "FAIL"
assert all(c["drifted"] is not None for c in columns.values()), "a column without its drift test"
print(json.dumps({{"version": evidently.__version__, "pandas": pd.__version__, "read": read, "run": run,
    "rows": len(reference), "columns": columns, "drifted_count": count,
    "baseline_kib": baseline, "peak_kib": hwm_kib()}}))
"""
)

_STRANDLINE_IMPORTS = """
import json, statistics, sys, time
sys.path.insert(0, {repo!r})
from consumers.drift import VersionSide, compare
from daemon.tables import profile_file
from schemas.config import DriftSettings
from schemas.profiles import TableProfile, TableSchema
settings = DriftSettings()
"""

STRANDLINE_E2E_CHILD = (
    _HWM
    + _STRANDLINE_IMPORTS
    + """
baseline = hwm_kib()
runs = []
for _ in range({repeat}):
    started = time.perf_counter()
    ref_schema, ref_profile = profile_file({reference!r}, "parquet")
    cur_schema, cur_profile = profile_file({current!r}, "parquet")
    profiled = time.perf_counter()
    report = compare(VersionSide(1, "reference", ref_schema, ref_profile),
                     VersionSide(2, "current", cur_schema, cur_profile), settings, dataset="bench-drift")
    done = time.perf_counter()
    runs.append({{"profile": profiled - started, "compare": done - profiled, "total": done - started,
                 "flagged": sorted(c.name for c in report.columns if c.drifted)}})
for name, schema, profile in (("reference", ref_schema, ref_profile), ("current", cur_schema, cur_profile)):
    with open({out!r} + f"/{{name}}.profile.json", "w") as fh:
        json.dump({{"schema": schema.model_dump(mode="json"), "profile": profile.model_dump(mode="json")}}, fh)
print(json.dumps({{"runs": runs, "rows": ref_profile.rows, "drifted": report.drifted, "share": report.share,
    "reasons": list(report.reasons), "columns": [c.model_dump(mode="json") for c in report.columns],
    "profile_json_bytes": len(ref_profile.model_dump_json()) + len(cur_profile.model_dump_json()),
    "baseline_kib": baseline, "peak_kib": hwm_kib()}}))
"""
)

STRANDLINE_COMPARE_CHILD = (
    _HWM
    + _STRANDLINE_IMPORTS
    + """
sides = []
for number, name in ((1, "reference"), (2, "current")):
    with open({out!r} + f"/{{name}}.profile.json") as fh:
        stored = json.load(fh)
    sides.append(VersionSide(number, name, TableSchema.model_validate(stored["schema"]),
                             TableProfile.model_validate(stored["profile"])))
baseline = hwm_kib()
walls, verdicts = [], set()
for _ in range({repeat}):
    started = time.perf_counter()
    report = compare(sides[0], sides[1], settings, dataset="bench-drift")
    walls.append(time.perf_counter() - started)
    verdicts.add(tuple(sorted(c.name for c in report.columns if c.drifted)))
print(json.dumps({{"first": walls[0], "best": min(walls[1:] or walls), "median": statistics.median(walls[1:] or walls),
    "verdicts": sorted(verdicts), "baseline_kib": baseline, "peak_kib": hwm_kib()}}))
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


def mib(kib: int) -> float:
    return kib / 1024


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def strandline_side(folder: Path, reference: Path, current: Path, repeat: int, compare_repeat: int) -> dict[str, Any]:
    """End to end (profiles written to ``folder``), then compare-only in a fresh process on them."""
    e2e = run_child(
        sys.executable,
        STRANDLINE_E2E_CHILD.format(
            repo=str(REPO), reference=str(reference), current=str(current), repeat=repeat, out=str(folder)
        ),
        1200,
    )
    only = run_child(
        sys.executable, STRANDLINE_COMPARE_CHILD.format(repo=str(REPO), repeat=compare_repeat, out=str(folder)), 600
    )
    return {"e2e": e2e, "compare": only}


def flagged_text(columns: list[str] | tuple[str, ...] | set[str] | frozenset[str]) -> str:
    return ",".join(sorted(columns)) or "(none)"


# -- the benchmark --------------------------------------------------------------------------


def bench(report: Report, folder: Path, args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparison; returns the per-column table and Strandline's first run (for the scaling part)."""
    note(f"writing 2 x {args.rows:,} rows x 20 columns to {folder} …")
    reference, current, shifted = generate(folder, args.rows, args.seed)
    report.params.update(
        rows=args.rows,
        columns=20,
        file_mib=round((reference.stat().st_size + current.stat().st_size) / 2**20, 1),
        shifted=flagged_text(shifted),
        runs=args.runs,
        repeat=args.repeat,
        compare_repeat=args.compare_repeat,
        sha256=f"{digest(reference)}/{digest(current)}",
        load_before=load(),
    )
    evidently_ok = EVIDENTLY_PYTHON.exists() and not args.no_evidently
    if not evidently_ok and not args.no_evidently:
        note(f"{EVIDENTLY_PYTHON} not found: run `bash bench/setup_peers.sh` for the Evidently comparison")

    ours_runs: list[dict[str, Any]] = []
    theirs_runs: list[dict[str, Any]] = []
    for n in range(1, args.runs + 1):
        if evidently_ok:
            note(f"run {n}: Evidently (load {load()}) …")
            theirs = run_child(
                EVIDENTLY_PYTHON, EVIDENTLY_CHILD.format(reference=str(reference), current=str(current)), 1800
            )
            theirs["flagged"] = sorted(c for c, v in theirs["columns"].items() if v["drifted"])
            theirs["load"] = load()
            theirs_runs.append(theirs)
            note(
                f"run {n}: Evidently read {theirs['read']:.2f} s + run {theirs['run']:.2f} s, peak RSS "
                f"{mib(theirs['peak_kib']):.0f} MiB, flagged {flagged_text(theirs['flagged'])}"
            )
        note(f"run {n}: Strandline (load {load()}) …")
        ours = strandline_side(folder, reference, current, args.repeat, args.compare_repeat)
        ours["load"] = load()
        ours_runs.append(ours)
        e2e, only = ours["e2e"], ours["compare"]
        note(
            f"run {n}: Strandline end to end cold {e2e['runs'][0]['total']:.3f} s "
            f"(profiles {e2e['runs'][0]['profile']:.3f} s), peak RSS {mib(e2e['peak_kib']):.0f} MiB; compare only "
            f"best {only['best'] * 1e3:.1f} ms, peak RSS {mib(only['peak_kib']):.0f} MiB; "
            f"flagged {flagged_text(e2e['runs'][0]['flagged'])}"
        )

    # -- Strandline
    e2e_cold = [r["e2e"]["runs"][0]["total"] for r in ours_runs]
    e2e_warm = [min(x["total"] for x in r["e2e"]["runs"][1:]) for r in ours_runs if len(r["e2e"]["runs"]) > 1]
    profile_cold = [r["e2e"]["runs"][0]["profile"] for r in ours_runs]
    compare_first = [r["compare"]["first"] for r in ours_runs]
    compare_best = [r["compare"]["best"] for r in ours_runs]
    compare_median = [r["compare"]["median"] for r in ours_runs]
    our_verdicts = {tuple(x["flagged"]) for r in ours_runs for x in r["e2e"]["runs"]}
    our_verdicts |= {tuple(v) for r in ours_runs for v in r["compare"]["verdicts"]}
    ours_flagged = set(ours_runs[0]["e2e"]["runs"][0]["flagged"])
    report.add("strandline end to end, cold (median of runs)", statistics.median(e2e_cold), "s")
    report.add("strandline end to end, cold per run", " / ".join(f"{x:.3f}" for x in e2e_cold), "s")
    if e2e_warm:
        report.add("strandline end to end, warm (median of runs)", statistics.median(e2e_warm), "s")
    report.add("— of which profiling both files, cold", statistics.median(profile_cold), "s")
    report.add("strandline compare only, first call", statistics.median(compare_first) * 1e3, "ms")
    report.add("strandline compare only, best", min(compare_best) * 1e3, "ms")
    report.add("strandline compare only, median", statistics.median(compare_median) * 1e3, "ms")
    report.add("strandline peak RSS, end to end", round(mib(max(r["e2e"]["peak_kib"] for r in ours_runs))), "MiB")
    report.add("strandline RSS before profiling", round(mib(ours_runs[0]["e2e"]["baseline_kib"])), "MiB")
    report.add("strandline peak RSS, compare only", round(mib(max(r["compare"]["peak_kib"] for r in ours_runs))), "MiB")
    report.add(
        "strandline RSS growth in compare only",
        round(mib(max(r["compare"]["peak_kib"] - r["compare"]["baseline_kib"] for r in ours_runs)), 1),
        "MiB",
    )
    report.add("strandline profiles (JSON, both)", ours_runs[0]["e2e"]["profile_json_bytes"], "bytes")
    report.add("strandline flagged", flagged_text(ours_flagged), "", flagged_text(shifted), ours_flagged == shifted)
    report.add(
        "strandline verdicts identical",
        f"{len(our_verdicts)} distinct in {len(ours_runs)} runs",
        "",
        "1 distinct",
        len(our_verdicts) == 1,
    )
    report.add("strandline dataset drifted", str(ours_runs[0]["e2e"]["drifted"]), "")

    # -- Evidently
    if theirs_runs:
        e_read = [r["read"] for r in theirs_runs]
        e_run = [r["run"] for r in theirs_runs]
        e_total = [r["read"] + r["run"] for r in theirs_runs]
        their_verdicts = {tuple(r["flagged"]) for r in theirs_runs}
        theirs_flagged = set(theirs_runs[0]["flagged"])
        report.params["evidently"] = f"{theirs_runs[0]['version']} (pandas {theirs_runs[0]['pandas']})"
        report.add("evidently read_parquet both (median)", statistics.median(e_read), "s")
        report.add("evidently Report.run (median)", statistics.median(e_run), "s")
        report.add("evidently end to end (median)", statistics.median(e_total), "s")
        report.add("evidently end to end per run", " / ".join(f"{x:.1f}" for x in e_total), "s")
        report.add("evidently peak RSS", round(mib(max(r["peak_kib"] for r in theirs_runs))), "MiB")
        report.add(
            "evidently flagged", flagged_text(theirs_flagged), "", flagged_text(shifted), theirs_flagged == shifted
        )
        report.add(
            "evidently verdicts identical",
            f"{len(their_verdicts)} distinct over {len(theirs_runs)} runs",
            "",
            "1 distinct",
            len(their_verdicts) == 1,
        )
        report.add(
            "evidently dataset drifted",
            str(theirs_runs[0]["drifted_count"] / len(theirs_runs[0]["columns"]) >= 0.5),
            "",
        )
        report.add(
            "same columns flagged by both",
            str(theirs_flagged == ours_flagged),
            "",
            "True",
            theirs_flagged == ours_flagged,
        )
        cold = statistics.median(e_total) / statistics.median(e2e_cold)
        report.add("speed-up end to end, cold", cold, "x", "≥ 30x", cold >= 30)
        if e2e_warm:
            report.add("speed-up end to end, warm", statistics.median(e_total) / statistics.median(e2e_warm), "x")
        report.add("speed-up Report.run vs compare only", statistics.median(e_run) / min(compare_best), "x")
    report.params["load_after"] = load()
    return _columns(ours_runs[0], theirs_runs[0] if theirs_runs else None, shifted), ours_runs[0]


def _columns(ours: dict[str, Any], theirs: dict[str, Any] | None, shifted: frozenset[str]) -> dict[str, Any]:
    """Per column: shifted or not, each tool's test, score, threshold and verdict (first run)."""
    out: dict[str, Any] = {}
    for c in ours["e2e"]["columns"]:
        row: dict[str, Any] = {
            "shifted": c["name"] in shifted,
            "strandline": {k: c[k] for k in ("test", "score", "threshold", "drifted", "psi", "detail")},
        }
        if theirs is not None and c["name"] in theirs["columns"]:
            row["evidently"] = theirs["columns"][c["name"]]
        out[c["name"]] = row
    return out


def print_columns(columns: dict[str, Any]) -> None:
    rows = [("column", "shifted", "strandline", "score", "drifted", "evidently", "score", "drifted", "detail")]
    for name, row in columns.items():
        s, e = row["strandline"], row.get("evidently") or {}
        rows.append(
            (
                name,
                "yes" if row["shifted"] else "",
                str(s["test"]),
                "-" if s["score"] is None else f"{s['score']:.4g}",
                "DRIFT" if s["drifted"] else "",
                str(e.get("method", "-")),
                "-" if e.get("score") is None else f"{e['score']:.4g}",
                "DRIFT" if e.get("drifted") else "",
                s["detail"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n  per column (first run)")
    for n, r in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def scaling(report: Report, args: Any, main_rows: int, main: dict[str, Any] | None) -> None:
    """Strandline's side at each of --scale-rows: compare-only memory should not move with the rows."""
    for rows in args.scale_rows:
        if rows == main_rows and main is not None:
            ours = main
        else:
            folder = fresh_tempdir("drift-scale")
            try:
                note(f"scaling: {rows:,} rows (load {load()}) …")
                reference, current, _ = generate(folder, rows, args.seed)
                ours = strandline_side(folder, reference, current, 2, args.compare_repeat)
            finally:
                remove_tree(folder)
        e2e, only = ours["e2e"], ours["compare"]
        label = f"{rows:,} rows"
        report.add(f"[{label}] end to end, cold", e2e["runs"][0]["total"], "s")
        report.add(f"[{label}] peak RSS, end to end", round(mib(e2e["peak_kib"])), "MiB")
        report.add(f"[{label}] compare only, best", only["best"] * 1e3, "ms")
        report.add(f"[{label}] peak RSS, compare only", round(mib(only["peak_kib"])), "MiB")
        report.add(
            f"[{label}] RSS growth in compare only", round(mib(only["peak_kib"] - only["baseline_kib"]), 1), "MiB"
        )
        report.add(f"[{label}] profiles (JSON, both)", e2e["profile_json_bytes"], "bytes")
        report.add(f"[{label}] flagged", flagged_text(e2e["runs"][0]["flagged"]))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of each table (default 1,000,000)")
    p.add_argument(
        "--runs", type=int, default=1, help="whole-bench runs on the same files (default 1; 3 for stability)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="Strandline end-to-end calls per run in one process (first cold; default 2)",
    )
    p.add_argument("--compare-repeat", type=int, default=50, help="compare-only calls per run (default 50)")
    p.add_argument(
        "--scale-rows",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[100_000, 1_000_000],
        help="row counts for Strandline's memory-scaling part, comma-separated ('' to skip; default 100000,1000000)",
    )
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--no-evidently", action="store_true", help="Strandline's side only")
    p.add_argument("--keep", action="store_true", help="keep the temp folder with the data and profiles")
    args = p.parse_args()
    if args.runs < 1 or args.repeat < 1 or args.compare_repeat < 1:
        p.error("--runs, --repeat and --compare-repeat must be at least 1")

    report = Report("drift: consumers.drift.compare vs Evidently DataDriftPreset on Parquet")
    folder = fresh_tempdir("drift")
    try:
        columns, first = bench(report, folder, args)
    finally:
        if args.keep:
            note(f"data kept in {folder}")
        else:
            remove_tree(folder)
    if args.scale_rows:
        scaling(report, args, args.rows, first)
    if args.json:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            report.emit(True)
        out = json.loads(buffer.getvalue())
        out["columns"] = columns
        print(json.dumps(out, indent=2, default=str))
    else:
        report.emit(False)
        print_columns(columns)


if __name__ == "__main__":
    main()
