"""Versioning cost: one version of a few changed files in a dataset of many (issue 5).

How it is measured
  * A local folder of ``--files`` (default 100,000) files, 1,000 to a subfolder, in a fresh temp
    folder: ``--ext bin`` (default), 64..200 random bytes each, versioned by hash; or ``--ext
    csv``, 3-row tables, so that every version also has its schema and profile merged.
  * The first pass builds the catalog: ``Daemon.scan`` without publishing (one version of every
    file; events stay in the outbox). Timed for scale only.
  * Then, in this process, an ``Engine`` on that catalog: its view of the dataset is built
    (``Engine.prepare``, what ``strandline watch`` does once at start; timed), and ``--rounds``
    times (default 10): ``--changes`` (default 10) random files are rewritten with new bytes,
    handed to the engine (``note_rels``, as a bucket poll or notification hands keys over) and
    one versioning pass runs (``process_due(ignore_settle=True)``): wall clock and CPU of this
    process around that pass. Median and max over the rounds; each round must make one version.
  * Peak RSS (VmHWM) after the first pass and at the end. No Kafka, no S3: this is the part of
    a version that grows with the dataset, apart from listing it (see bench/buckets.py).

Target (issue 5): cost in proportion to the changes, not to the dataset.

Run: .venv/bin/python bench/versioning.py [--files 100000] [--ext bin|csv] [--changes 10] [--rounds 10] [--json]
"""

from __future__ import annotations

import random
import statistics
import time

import _common as c

PER_DIR = 1000


def rel_of(i: int, ext: str) -> str:
    return f"part-{i // PER_DIR:03}/obj-{i:06}.{ext}"


def body(rng: random.Random, i: int, ext: str) -> bytes:
    if ext == "bin":
        return rng.randbytes(rng.randint(64, 200))
    rows = [f"{i * 3 + r},{rng.uniform(0, 1000):.4f},{rng.choice('abcdefgh')}" for r in range(3)]
    return ("id,amount,label\n" + "\n".join(rows) + "\n").encode()


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--files", type=int, default=100_000, help="files in the dataset (default 100000)")
    p.add_argument("--ext", choices=("bin", "csv"), default="bin", help="bin: random bytes (default); csv: tables")
    p.add_argument("--changes", type=int, default=10, help="files rewritten per version (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="versions timed (default 10)")
    p.add_argument("--seed", type=int, default=5, help="random seed")
    args = p.parse_args()

    from daemon.app import Daemon, Target
    from daemon.catalog import Catalog
    from daemon.config import catalog_path
    from daemon.engine import Engine
    from schemas.config import DatasetConfig, StrandlineConfig

    report = c.Report(
        "versioning: one version of a few changed files in a big local dataset",
        {"files": args.files, "ext": args.ext, "changes": args.changes, "rounds": args.rounds},
    )
    work = c.fresh_tempdir("versioning")
    try:
        rng = random.Random(args.seed)
        root = work / "data"
        c.note(f"writing {args.files:,} files in {work} …")
        for i in range(args.files):
            path = root / rel_of(i, args.ext)
            if i % PER_DIR == 0:
                path.parent.mkdir(parents=True)
            path.write_bytes(body(rng, i, args.ext))
        config = StrandlineConfig(
            state_dir=work / "state",
            reconcile_interval_seconds=0,
            datasets=[DatasetConfig(name="lake", root=root)],
        )
        c.note("first pass …")
        t0, cpu0 = time.perf_counter(), c.cpu_seconds()
        created, _ = Daemon(config, Target.resolve(config, None)).scan(publish_timeout=None)
        report.add("first pass (scan): time", time.perf_counter() - t0, "s")
        report.add("first pass (scan): CPU", c.cpu_seconds() - cpu0, "s")
        report.add("first pass: versions", created, "", "1", created == 1)
        report.add("peak RSS after the first pass", c.vmhwm_kib() / 1024, "MiB")

        walls: list[float] = []
        cpus: list[float] = []
        with Catalog(catalog_path(config)) as catalog:
            engine = Engine(catalog, config, list(config.datasets))
            t0, cpu0 = time.perf_counter(), c.cpu_seconds()
            prepare = getattr(engine, "prepare", None)  # absent before the view existed: the script runs on both
            if prepare is not None:
                prepare()
                report.add("engine start: the dataset's view built (prepare)", time.perf_counter() - t0, "s")
                report.add("engine start: prepare CPU", c.cpu_seconds() - cpu0, "s")
            for n in range(args.rounds):
                rels = {rel_of(i, args.ext) for i in rng.sample(range(args.files), args.changes)}
                for rel in rels:
                    (root / rel).write_bytes(body(rng, n, args.ext))
                time.sleep(0.06)  # past the racy window: the new stats are trusted, as in a daemon
                before = engine.versions_created
                t0, cpu0 = time.perf_counter(), c.cpu_seconds()
                engine.note_rels("lake", rels)
                engine.process_due(ignore_settle=True)
                walls.append(time.perf_counter() - t0)
                cpus.append(c.cpu_seconds() - cpu0)
                if engine.versions_created != before + 1:
                    raise SystemExit(f"round {n} made {engine.versions_created - before} versions, not 1")
        label = f"one version of {args.changes} changed files"
        report.add(f"{label}: wall, median", statistics.median(walls) * 1000, "ms")
        report.add(f"{label}: wall, max", max(walls) * 1000, "ms")
        report.add(f"{label}: CPU, median", statistics.median(cpus) * 1000, "ms")
        report.add(f"{label}: CPU, max", max(cpus) * 1000, "ms")
        report.add("peak RSS at the end", c.vmhwm_kib() / 1024, "MiB")
    finally:
        c.remove_tree(work)
    report.emit(args.json)


if __name__ == "__main__":
    main()
