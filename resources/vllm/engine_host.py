"""A warm engine host: one process with vLLM imported forks each engine child.

Importing vLLM costs about 8 s of one core here, while an engine for a tiny model starts
in 3 s once it is imported. Where many engines start one after another (the test suite,
a developer's loop of publishes), `python -m resources.vllm.engine_host SOCKET` imports
vLLM once, and `run_child` (resources/vllm/runner.py), when MODELPUB_ENGINE_HOST names
that socket, asks the host to fork the child instead of starting a fresh interpreter.

Each child still runs in a process of its own, with the caller's environment, directory
and arguments, its stdout and stderr in the caller's files: a crash fails a check, not
the caller. A caller that goes away (killed) takes its child with it. Without a host, or
when it cannot be reached, children start fresh as before. Whoever can connect runs code
as the host's user, so its socket is 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

HOST_ENV = "MODELPUB_ENGINE_HOST"
# The environment of every engine child, the host's own included (some of it is read when
# vLLM and torch are imported).
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: faster start on CPU
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default would take a large slice of RAM
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Every engine here runs eager (enforce_eager); tracing the one helper vLLM's sampler
    # still compiles took 3 s of each start, for the same token ids.
    "TORCHDYNAMO_DISABLE": "1",
}
# what every child imports: the host pays for it once
WARM_MODULES = ("vllm.entrypoints.llm", "resources.vllm.runner", "resources.vllm.tensorized")


@dataclass
class ChildRequest:
    module: str  # run as `python -m module *args`
    args: list[str]
    env: dict[str, str]
    cwd: str
    stdout: str  # files the child's output goes to
    stderr: str


class HostUnavailable(OSError):
    """No engine host answers at the socket: start the child fresh instead."""


def host_socket() -> str | None:
    return os.environ.get(HOST_ENV) or None


class ForkedChild:
    """A child the host forked for us: its pid at once, its exit status when it ends."""

    def __init__(self, socket_path: str, request: ChildRequest) -> None:
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(socket_path)
            self._conn.sendall(json.dumps(asdict(request)).encode() + b"\n")
            self._answers = self._conn.makefile("r")
            self.pid = int(json.loads(self._answers.readline())["pid"])
        except (OSError, ValueError, KeyError) as e:
            self._conn.close()
            raise HostUnavailable(f"engine host at {socket_path}: {e}") from e

    def wait(self, timeout_s: float) -> int:
        """The child's exit status; on timeout the child is killed and TimeoutError raised."""
        self._conn.settimeout(timeout_s)
        try:
            line = self._answers.readline()
        except TimeoutError:
            self.kill()
            raise
        finally:
            self._conn.close()
        if not line:  # the host died: so did our child's handler
            self.kill()
            return -signal.SIGKILL
        return int(json.loads(line)["returncode"])

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _run_child(request: ChildRequest) -> None:
    """In the forked child: become `python -m module *args` as the caller asked, then exit."""
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    for fd, path in ((1, request.stdout), (2, request.stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [request.module, *request.args]
    code = 0
    try:
        runpy.run_module(request.module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _handle(conn: socket.socket) -> None:
    """In a handler process: fork the child, tell the caller its pid, then its exit status;
    kill it if the caller hangs up first."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request = ChildRequest(**json.loads(conn.makefile("r").readline()))
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_child(request)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    exited = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([conn, exited], [], [])
        if exited in ready:
            status = os.waitpid(pid, 0)[1]
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
            return
        if not conn.recv(1):  # the caller went away
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def serve(socket_path: str) -> None:
    """Import what engines need, then fork a handler per request, until killed."""
    # Bound first: a caller that comes while vLLM is being imported waits in the backlog.
    # Mode 0600 from the start: whoever connects runs code as this user.
    Path(socket_path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(socket_path)
    finally:
        os.umask(umask)
    listener.listen(64)
    os.environ.update(ENGINE_ENV)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
    for module in WARM_MODULES:
        __import__(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    while True:
        conn, _ = listener.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            try:
                _handle(conn)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
