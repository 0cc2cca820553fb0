"""Counts of a build (read, kept, filtered and failed by reason, rows), the K histogram and stage timings."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from estimators.lens import MAX_BOKEH_LEVEL

#: K histogram: bins [k, k + 1) for k = 0 .. 29, then one open bin [30, inf) (estimated real K can exceed 30).
K_BIN_EDGES = tuple(range(0, int(MAX_BOKEH_LEVEL) + 1))
K_BINS = len(K_BIN_EDGES)
#: Width of the bins of the printed summary histogram.
SUMMARY_BIN_WIDTH = 3


def k_bin(level: float) -> int:
    """Index of the histogram bin of bokeh level ``level`` (>= 0)."""
    return min(int(math.floor(max(level, 0.0))), K_BINS - 1)


@dataclass
class BuildStats:
    """Counts of a build or of one shard; shards add up with :meth:`merge`."""

    photos: int = 0
    kept: int = 0
    filtered: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    rows_real: int = 0
    rows_synthetic: int = 0
    groups: int = 0  # kept photos that got renders
    k_real: list[int] = field(default_factory=lambda: [0] * K_BINS)
    k_synthetic: list[int] = field(default_factory=lambda: [0] * K_BINS)
    stage_seconds: Counter = field(default_factory=Counter)

    def add(self, rows: list[dict[str, Any]], outcome: Optional[dict[str, Any]], timings: dict[str, float]) -> None:
        """Count one source photo: its rows, or its outcome (filtered / failed), and its stage times."""
        self.photos += 1
        self.stage_seconds.update(timings)
        if outcome is not None:
            (self.filtered if outcome["status"] == "filtered" else self.failed)[outcome["code"]] += 1
            return
        self.kept += 1
        synthetic = 0
        for row in rows:
            hist = self.k_synthetic if row["kind"] == "synthetic" else self.k_real
            if row["bokeh_level"] is not None:
                hist[k_bin(row["bokeh_level"])] += 1
            synthetic += row["kind"] == "synthetic"
        self.rows_real += len(rows) - synthetic
        self.rows_synthetic += synthetic
        self.groups += synthetic > 0

    def merge(self, other: "BuildStats") -> None:
        """Add another shard's counts to these."""
        for name in ("photos", "kept", "rows_real", "rows_synthetic", "groups"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("filtered", "failed", "stage_seconds"):
            getattr(self, name).update(getattr(other, name))
        self.k_real = [a + b for a, b in zip(self.k_real, other.k_real)]
        self.k_synthetic = [a + b for a, b in zip(self.k_synthetic, other.k_synthetic)]

    @property
    def rows(self) -> int:
        return self.rows_real + self.rows_synthetic

    def to_dict(self) -> dict[str, Any]:
        """The stats.json object (see :mod:`dataset_tools.writer` for the layout)."""
        seconds = {k: round(v, 4) for k, v in sorted(self.stage_seconds.items())}
        return {
            "photos_read": self.photos,
            "kept": self.kept,
            "filtered": sum(self.filtered.values()),
            "filtered_by_reason": dict(sorted(self.filtered.items())),
            "failed": sum(self.failed.values()),
            "failed_by_reason": dict(sorted(self.failed.items())),
            "rows_written": self.rows,
            "rows_real": self.rows_real,
            "rows_synthetic": self.rows_synthetic,
            "groups": self.groups,
            "k_histogram": {
                "bin_edges": list(K_BIN_EDGES),
                "note": "bin i counts K in [i, i+1); the last bin counts K >= 30",
                "all": [a + b for a, b in zip(self.k_real, self.k_synthetic)],
                "real": list(self.k_real),
                "synthetic": list(self.k_synthetic),
            },
            "stage_seconds": seconds,
            "stage_photos_per_second": {
                k: round(self.photos / v, 3) for k, v in seconds.items() if v > 0
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildStats":
        """The inverse of :meth:`to_dict` (timings and counts only; the per-second figures are derived)."""
        hist = data["k_histogram"]
        return cls(
            photos=data["photos_read"],
            kept=data["kept"],
            filtered=Counter(data["filtered_by_reason"]),
            failed=Counter(data["failed_by_reason"]),
            rows_real=data["rows_real"],
            rows_synthetic=data["rows_synthetic"],
            groups=data["groups"],
            k_real=list(hist["real"]),
            k_synthetic=list(hist["synthetic"]),
            stage_seconds=Counter(data["stage_seconds"]),
        )

    def summary(self) -> str:
        """The multi-line summary ``bokeh build`` prints at the end, with a text K histogram."""
        def reasons(counter: Counter) -> str:
            return ", ".join(f"{code} {n}" for code, n in counter.most_common()) or "-"

        lines = [
            f"photos read   {self.photos}",
            f"kept          {self.kept}",
            f"filtered      {sum(self.filtered.values())}  ({reasons(self.filtered)})",
            f"failed        {sum(self.failed.values())}  ({reasons(self.failed)})",
            f"rows written  {self.rows}  ({self.rows_real} real, {self.rows_synthetic} synthetic in {self.groups} groups)",
            "K histogram (rows; # = real, + = synthetic)",
        ]
        counts = []
        for start in range(0, K_BINS - 1, SUMMARY_BIN_WIDTH):
            stop = min(start + SUMMARY_BIN_WIDTH, K_BINS - 1)
            counts.append((f"{start:>2}-{stop:<2}", sum(self.k_real[start:stop]), sum(self.k_synthetic[start:stop])))
        counts.append(("30+  ", self.k_real[-1], self.k_synthetic[-1]))
        top = max((r + s for _, r, s in counts), default=0) or 1
        for label, real, synthetic in counts:
            bar = "#" * round(40 * real / top) + "+" * round(40 * synthetic / top)
            lines.append(f"  {label} {real + synthetic:>7} {bar}")
        return "\n".join(lines)
