"""Dagster's own processes (daemon, webserver) run for real in tests, as children we own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_tool(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A console script of this venv (`dagster`, `dg`, ...) run from the repo root, as a
    user runs it, with the test's environment; the outcome is the caller's to judge."""
    return subprocess.run(
        [str(Path(sys.executable).parent / name), *args],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dagster_home(config: str = "") -> Path:
    """The test's DAGSTER_HOME (set by the `env` fixture), with `config` as dagster.yaml."""
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + config)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], log: Path) -> Process:
    """Start a console script of this venv in the repo root, in its own process group,
    with this checkout first on the path of it and of every process it starts."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [str(bin_dir / argv[0]), *argv[1:]],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(popen, log)


def stop(process: Process, grace_s: float = 20) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left of it."""
    if process.popen.poll() is None:
        os.killpg(process.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.popen.pid, signal.SIGKILL)
    process.popen.wait()


def wait_for(
    condition: Callable[[], object], timeout_s: float, what: str, process: Process
) -> object:
    """Poll `condition` until truthy; fail with the process log if it dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.log.name} exited waiting for {what}:\n{process.tail()}")
        time.sleep(1)
    raise AssertionError(
        f"no {what} within {timeout_s:.0f}s; {process.log.name}:\n{process.tail()}"
    )
