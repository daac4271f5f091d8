"""One measurement = one `Figure`: an absolute value and its ratio to a baseline
measured in the same run, on the same bytes, in the same place.

Other work on a shared machine moves absolute numbers between runs; a ratio to a
baseline taken minutes earlier in the same run moves much less.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Figure:
    group: str  # publish | load | vllm_start | memory | dagster
    model: str
    name: str  # what was measured
    value: float
    unit: str  # GB/s, s, x model size
    baseline: str  # what it is compared with
    baseline_value: float
    higher_is_better: bool
    target: float | None = None  # ratio the pipeline aims for, where the issue sets one
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "meets_target": self.meets_target}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gbps(num_bytes: int, seconds: float) -> float:
    return num_bytes / 1e9 / max(seconds, 1e-9)


def throughput(
    group: str,
    model: str,
    num_bytes: int,
    runs: dict[str, float],
    baseline: str,
    targets: dict[str, float] | None = None,
    notes: dict[str, str] | None = None,
) -> list[Figure]:
    """GB/s figures for each timed run, each against the baseline run's GB/s."""
    base = gbps(num_bytes, runs[baseline])
    return [
        Figure(
            group,
            model,
            name,
            gbps(num_bytes, seconds),
            "GB/s",
            baseline,
            base,
            higher_is_better=True,
            target=(targets or {}).get(name),
            note=(notes or {}).get(name, ""),
        )
        for name, seconds in runs.items()
        if name != baseline
    ]
