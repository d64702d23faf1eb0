"""The daemon's own measurements, observed where they happen and exposed by ``daemon.health``.

Histograms are prometheus_client's, kept out of the global registry: each Daemon (tests run
several in one process) owns its metrics, and ``DaemonCollector`` yields them at scrape time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prometheus_client import Histogram

# Seconds: a settle window is ~1 s, a reconcile of a big root can take minutes.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))


def latency_histogram(name: str, documentation: str) -> Histogram:
    return Histogram(name, documentation, buckets=_BUCKETS, registry=None)


@dataclass
class EngineMetrics:
    detection_seconds: Histogram = field(
        default_factory=lambda: latency_histogram(
            "strandline_detection_latency_seconds",
            "From the first change of a change-set noticed to its version recorded (settle included).",
        )
    )
    reconcile_seconds: Histogram = field(
        default_factory=lambda: latency_histogram(
            "strandline_reconcile_seconds", "Duration of full passes over a root (start-up, periodic, overflow)."
        )
    )
    errors: Counter[str] = field(default_factory=Counter)  # failed passes by exception kind
