"""Which versions keep their bytes: the retention rules of ``strandline gc``. Pure.

A version's bytes are kept when any rule holds: it is the dataset's newest version, one of
the newest ``keep_last``, younger than ``keep_days``, tagged, or used by a recorded retraining
run (lineage). With neither ``keep_last`` nor ``keep_days`` set, every version is kept: gc
then only removes bytes no version needs. Collected versions stay in the catalog, marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.catalog import VersionRow
from schemas.config import StrandlineConfig


@dataclass(frozen=True, slots=True)
class Retention:
    keep_last: int | None = None
    keep_days: float | None = None

    @property
    def keeps_everything(self) -> bool:
        return self.keep_last is None and self.keep_days is None

    def describe(self) -> str:
        if self.keeps_everything:
            return "keep every version (no keep_last or keep_days set)"
        parts = []
        if self.keep_last is not None:
            parts.append(f"the newest {self.keep_last}")
        if self.keep_days is not None:
            parts.append(f"those younger than {self.keep_days:g} days")
        return "keep " + " and ".join(parts) + ", tagged ones and those used by retraining runs"


def retention_for(config: StrandlineConfig, dataset: str) -> Retention:
    """The dataset's own keep_last/keep_days where set, else [store]'s."""
    own = next((d for d in config.datasets if d.name == dataset), None)
    keep_last = own.keep_last if own is not None and own.keep_last is not None else config.store.keep_last
    keep_days = own.keep_days if own is not None and own.keep_days is not None else config.store.keep_days
    return Retention(keep_last, keep_days)


@dataclass(frozen=True, slots=True)
class Verdict:
    version: VersionRow
    keep: bool
    reasons: tuple[str, ...]  # why it is kept; empty when collected


def decide(
    versions: Sequence[VersionRow],
    retention: Retention,
    tags: Mapping[int, Sequence[str]],
    lineage: Mapping[int, Sequence[str]],
    now: datetime,
) -> list[Verdict]:
    """A verdict for every version that still has its bytes (restorable, not collected), oldest first."""
    ordered = sorted(versions, key=lambda v: v.seq)
    newest = ordered[-1].seq if ordered else 0
    recent = {v.seq for v in ordered[-retention.keep_last :]} if retention.keep_last else set()
    cutoff = now - timedelta(days=retention.keep_days) if retention.keep_days is not None else None
    out: list[Verdict] = []
    for v in ordered:
        if not v.restorable or v.collected_at is not None:
            continue
        reasons: list[str] = []
        if retention.keeps_everything:
            reasons.append("no retention set")
        if v.seq == newest:
            reasons.append("newest")
        if v.seq in recent:
            reasons.append(f"in the newest {retention.keep_last}")
        if cutoff is not None and v.created_at >= cutoff:
            reasons.append(f"younger than {retention.keep_days:g} days")
        if tags.get(v.seq):
            reasons.append("tagged " + ", ".join(tags[v.seq]))
        if lineage.get(v.seq):
            runs = lineage[v.seq]
            more = f" and {len(runs) - 1} more" if len(runs) > 1 else ""
            reasons.append(f"used by retraining run {runs[0]}{more}")
        out.append(Verdict(v, bool(reasons), tuple(reasons)))
    return out
