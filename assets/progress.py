"""Progress of a long step, as debug log lines a terminal can draw as a bar.

A step logs `modelpub-progress <stage> <done>/<total>` at most twice a second (and at the
end of each stage); the CLI draws them (dagster_project/progress.py), the Dagster UI
shows them as ordinary debug lines.
"""

from __future__ import annotations

import re
import time

from dagster import AssetExecutionContext

from resources.formats.format import Progress

MARK = "modelpub-progress"
_LINE = re.compile(rf"^{MARK} (\w+) (\d+)/(\d+)$")


def progress_message(stage: str, done: int, total: int) -> str:
    return f"{MARK} {stage} {done}/{total}"


def parse_progress(message: str) -> tuple[str, int, int] | None:
    """(stage, done, total) of a progress line, else None."""
    match = _LINE.match(message)
    return (match[1], int(match[2]), int(match[3])) if match else None


def step_progress(context: AssetExecutionContext, every_s: float = 0.5) -> Progress:
    """A Progress that logs to the step's run, throttled to one line per `every_s`."""
    last = 0.0

    def report(stage: str, done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if 0 < done < total and now - last < every_s:
            return
        last = now
        context.log.debug(progress_message(stage, done, total))

    return report
