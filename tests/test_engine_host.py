"""The engine host (resources/vllm/engine_host.py) forks children that behave as fresh
`python -m` processes: the caller's environment and directory, its exit status and
output, killed with the caller and on timeout. The session's host is the real one."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resources.vllm.engine_host import HOST_ENV, ChildRequest, ForkedChild
from resources.vllm.runner import VllmRunError, run_child

pytestmark = pytest.mark.vllm  # the host imports vLLM

CHILD = "tests.engine_child"


def gone(pid: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def test_a_forked_child_gets_the_callers_environment_and_reports_its_status(monkeypatch):
    assert os.environ.get(HOST_ENV)
    monkeypatch.setenv("SEEN", "from the caller")
    seen = run_child(CHILD, {}, timeout_s=60)
    assert seen["variable"] == "from the caller" and seen["cwd"] == os.getcwd()
    assert seen["parent"] != os.getpid()  # forked by the host, not started by us
    with pytest.raises(VllmRunError, match=r"(?s)status 3:.*it broke"):
        run_child(CHILD, {"exit": 3, "say": "it broke"}, timeout_s=60)


def test_without_a_reachable_host_the_child_starts_fresh(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(HOST_ENV, str(tmp_path / "no-host.sock"))
    monkeypatch.setenv("SEEN", "fresh")
    seen = run_child(CHILD, {}, timeout_s=120)
    assert seen["variable"] == "fresh" and seen["parent"] == os.getpid()
    assert "starting vLLM in a fresh process" in capsys.readouterr().err


def test_a_child_past_its_timeout_is_killed(tmp_path):
    (tmp_path / "spec.json").write_text('{"hang": true}')
    request = ChildRequest(
        CHILD, ["spec.json", "out.json"], dict(os.environ), str(tmp_path), "/dev/null", "/dev/null"
    )
    child = ForkedChild(os.environ[HOST_ENV], request)
    with pytest.raises(TimeoutError):
        child.wait(timeout_s=1)
    assert gone(child.pid)


def test_a_killed_caller_takes_its_child_with_it(tmp_path):
    """A publish killed mid-check (tests/test_faults.py) leaves no engine running."""
    (tmp_path / "spec.json").write_text('{"hang": true}')
    caller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from resources.vllm.engine_host import ChildRequest, ForkedChild\n"
            "r = ChildRequest(sys.argv[1], ['spec.json', 'out.json'], dict(os.environ),\n"
            "                 sys.argv[2], '/dev/null', '/dev/null')\n"
            "child = ForkedChild(os.environ['MODELPUB_ENGINE_HOST'], r)\n"
            "print(child.pid, flush=True)\n"
            "child.wait(600)\n",
            CHILD,
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(caller.stdout.readline())
    assert Path(f"/proc/{pid}").exists()
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    assert gone(pid)


def test_only_the_hosts_own_user_can_connect():
    """Whoever connects runs code as the host's user: its socket is 0600 from the start."""
    assert stat.S_IMODE(os.stat(os.environ[HOST_ENV]).st_mode) == 0o600
