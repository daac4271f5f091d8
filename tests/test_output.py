"""What a person sees from `modelpub publish`: a line per step and a summary, not
Dagster's event stream (unless --verbose); on a terminal, a live status line; a failure
as its step, reason and run id, without a traceback."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading

import pytest
from dagster import DagsterEventType, DagsterInstance

from tests.conftest import LLAMA, catalog_yaml

STEPS = ("fetch", "serialize+encrypt", "round trip (vLLM)", "publish")
# Dagster's console log lines (coloured on a terminal)
DAGSTER_LINE = re.compile(r" - (\x1b\[\d+m)?(DEBUG|INFO)(\x1b\[0m)? - publish_model - ")


def publish(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dagster_project.cli", "publish", LLAMA, *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )


def publish_on_a_terminal(*flags: str) -> str:
    """Everything the command writes to a pseudo-terminal, as a person would see it."""
    parent, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_project.cli", "publish", LLAMA, *flags],
        stdin=child,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(parent, 65536)
            except OSError:  # the terminal closed: the command ended
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    assert process.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    reader.join(timeout=30)
    os.close(parent)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.vllm
def test_publish_prints_a_line_per_step_and_a_summary(env):
    done = publish()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""  # data only with --json
    assert not DAGSTER_LINE.search(done.stderr), done.stderr[:3000]
    assert "\r" not in done.stderr  # plain lines for logs
    lines = done.stderr.splitlines()
    for step in STEPS:
        [line] = [x for x in lines if x.startswith(step + " ")]
        assert re.search(r"  \d+\.\d s$", line), line  # elapsed time
    [serialized] = [x for x in lines if x.startswith("serialize+encrypt")]
    staged = r"\(written in place, nothing staged\)"  # a local store: renamed into place
    assert re.search(rf"\d MB/s, upload [\d.]+ MB/s  {staged}  -> v1", serialized), serialized
    [checks] = [x for x in lines if x.startswith("round trip")]
    assert "tensors_match ok" in checks and "vllm_outputs_match ok" in checks
    assert f"published {LLAMA}@v1  (sha " in done.stderr
    assert f"serve it: modelpub serve {LLAMA}@v1  (vLLM's own lines: modelpub serve-command" in (
        done.stderr
    )
    [run_id] = re.findall(r"Dagster run ([0-9a-f-]{36}): its full event log", done.stderr)

    # The full event stream is kept for the UI, with the serializer's progress in it.
    with DagsterInstance.get() as instance:
        logs = instance.all_logs(run_id)
    assert any(e.dagster_event_type == DagsterEventType.STEP_START for e in logs)
    assert "modelpub-progress serialize 21/21" in [e.user_message for e in logs]


@pytest.mark.vllm
def test_a_terminal_gets_a_live_status_line_and_verbose_the_event_stream(env):
    seen = publish_on_a_terminal("--force", "--verbose")
    assert "\r\x1b[2Kround trip (vLLM)" in seen  # redrawn while vLLM runs
    assert DAGSTER_LINE.search(seen) and "STEP_START" in seen
    assert f"published {LLAMA}@v1" in seen


def test_a_failed_publish_says_step_reason_and_run_id_without_a_traceback(env):
    env.write_catalog(catalog_yaml(env.mirror, [{"repo_id": "test-org/not-mirrored"}]))
    done = subprocess.run(
        [sys.executable, "-m", "dagster_project.cli", "publish", "test-org/not-mirrored"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and not DAGSTER_LINE.search(done.stderr), done.stderr
    assert re.search(r"^fetch +FAILED  \d+\.\d s$", done.stderr, re.M), done.stderr
    assert re.search(
        r"publishing test-org__not-mirrored failed \(Dagster run [0-9a-f-]{36}\); nothing was "
        r"published\n  error: model_snapshot: .+",
        done.stderr,
    ), done.stderr
