"""What `modelpub publish` prints while a run goes on: one line per step, not Dagster's
event stream.

A Dagster logger attached to the CLI's in-process run receives every event; this turns
them into a line per finished step (what it did, sizes, throughput, elapsed time) and,
on a terminal, a live status line with a bar for serialization and upload. The full
event log stays in the run's Dagster event log (the summary names the run id).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from dagster import DagsterEventType, LoggerDefinition, logger

from assets.progress import parse_progress
from assets.publish_jobs import PUBLISH_JOBS

# Step -> what a person calls it.
LABELS = {
    step: label
    for job in PUBLISH_JOBS.values()
    for step, label in (
        (job.fetch, "fetch"),
        (job.serialize, "serialize+encrypt"),
        (job.checks, "round trip (vLLM)"),
        (job.publish, "publish"),
    )
}
WIDTH = max(len(label) for label in LABELS.values()) + 2
UNITS = {"serialize": "tensors", "upload": "files"}


@dataclass
class _Step:
    started: float
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    progress: tuple[str, int, int] | None = None


def _details(step: str, state: _Step) -> str:
    """What a finished step did, from what it recorded."""
    m = state.metadata
    if state.checks:
        return "  ".join(f"{name} {'ok' if passed else 'FAILED'}" for name, passed in state.checks)
    if "tensors_size" in m:
        return (
            f"{m['tensors_size']}  {m['serialize_throughput']}, upload {m['upload_throughput']}"
            + (f"  ({m['staging']})" if "staging" in m else "")
            + f"  -> {m['suffix']}"
        )
    if m.get("reused"):
        return f"reusing {m['suffix']}: already published from this sha"
    if "reference" in m:
        return f"{m['reference']}" + ("" if m.get("newly_published", True) else " (re-verified)")
    if "sha" in m and "size" in m:
        return f"{m['repo_id']}@{str(m['sha'])[:12]}  {m['size']}"
    return ""


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // total if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class StepLines(logging.Handler):
    """Prints a line per finished step to `stream`; where `live`, redraws the running
    step's status line (elapsed time, and a bar where the step reports progress)."""

    def __init__(self, stream: TextIO, live: bool):
        super().__init__(logging.DEBUG)
        self.stream, self.live = stream, live
        self.steps: dict[str, _Step] = {}
        self.running: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key")
        event = meta.get("dagster_event")
        if step is None:
            return
        with self._lock:
            try:
                if event is None:
                    parsed = parse_progress(meta.get("orig_message", ""))
                    if parsed and step in self.steps:
                        self.steps[step].progress = parsed
                    return
                self._on_event(step, event)
            except Exception:  # noqa: BLE001 - a display problem must never fail a publish
                return

    def _on_event(self, step: str, event: Any) -> None:
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            self.steps[step] = _Step(time.monotonic())
            self.running = step
            self._start_ticker()
        elif kind == DagsterEventType.ASSET_MATERIALIZATION and step in self.steps:
            metadata = event.step_materialization_data.materialization.metadata
            self.steps[step].metadata = {k: v.value for k, v in metadata.items()}
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION and step in self.steps:
            check = event.asset_check_evaluation_data
            self.steps[step].checks.append((check.check_name, check.passed))
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            state = self.steps.get(step, _Step(time.monotonic()))
            elapsed = time.monotonic() - state.started
            outcome = _details(step, state) if kind == DagsterEventType.STEP_SUCCESS else "FAILED"
            self._write(f"{LABELS.get(step, step):<{WIDTH}}{outcome}  {elapsed:.1f} s\n")
            self.running = None

    def _write(self, text: str) -> None:
        if self.live:
            text = "\r\x1b[2K" + text  # over the status line
        self.stream.write(text)
        self.stream.flush()

    def _status(self) -> str:
        step = self.running
        if step is None:
            return ""
        state = self.steps[step]
        line = f"{LABELS.get(step, step):<{WIDTH}}"
        if state.progress is not None:
            stage, done, total = state.progress
            line += f"{stage} {_bar(done, total)} {done}/{total} {UNITS.get(stage, '')}  "
        return line + f"{time.monotonic() - state.started:.0f} s"

    def _start_ticker(self) -> None:
        if not self.live or self._ticker is not None:
            return

        def tick() -> None:
            while not self._stop.wait(0.2):
                with self._lock:
                    status = self._status()
                    if status:
                        self.stream.write("\r\x1b[2K" + status)
                        self.stream.flush()

        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        super().close()


def step_lines_logger(lines: StepLines) -> LoggerDefinition:
    """The Dagster logger that feeds a run's events to `lines`."""

    @logger(description="modelpub's step lines for the CLI")
    def modelpub_steps(_init_context) -> logging.Logger:
        log = logging.getLogger("modelpub.steps")
        log.setLevel(logging.DEBUG)
        log.propagate = False
        log.handlers = [lines]
        return log

    return modelpub_steps
