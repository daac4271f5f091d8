"""Cross-process gates (a test seam; no product code knows of it).

A publish run as a subprocess stops right after the first call of one named method,
says so, and waits until the gate opens: the test then acts (kills it, kills a server)
at a known step, and two runs meet at a barrier, instead of polling and hoping the
machine is neither too slow nor too fast. Every Python process started with `env()`
installs the gate from `gate_site/sitecustomize.py`.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import wraps
from pathlib import Path

ENV = "MODELPUB_TEST_GATE"
SITE = Path(__file__).parent / "gate_site"
ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 600  # a gate never opened lets the process go on: the test then fails, not hangs


@dataclass
class Gate:
    root: str
    target: str  # "module:Class.method": the process waits after its first call returns
    parties: int = 0  # open by itself once this many processes arrived (0: by open())

    def env(self) -> dict[str, str]:
        """This process's environment, with the gate for each process started with it."""
        Path(self.root, "arrived").mkdir(parents=True, exist_ok=True)
        path = os.pathsep.join(p for p in (str(SITE), str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, ENV: json.dumps(asdict(self))}

    def arrived(self) -> list[str]:
        return sorted(p.name for p in Path(self.root, "arrived").iterdir())

    def wait_arrived(self, count: int = 1, timeout_s: float = 300) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(self.arrived()) < count:
            assert time.monotonic() < deadline, f"{self.target} not reached within {timeout_s} s"
            time.sleep(0.05)
        return self.arrived()

    def open(self) -> None:
        Path(self.root, "open").touch()

    def _is_open(self) -> bool:
        opened = Path(self.root, "open").exists()
        return opened or (self.parties > 0 and len(self.arrived()) >= self.parties)

    def _wait(self) -> None:
        Path(self.root, "arrived", str(os.getpid())).touch()
        deadline = time.monotonic() + WAIT_S
        while not self._is_open() and time.monotonic() < deadline:
            time.sleep(0.05)


def install(spec: str) -> None:
    """Wrap the gate's method so that its first call, once returned, waits at the gate."""
    gate = Gate(**json.loads(spec))
    module_name, _, qualified = gate.target.partition(":")
    owner_name, _, method = qualified.rpartition(".")
    owner = getattr(importlib.import_module(module_name), owner_name)
    original = getattr(owner, method)
    reached = []

    @wraps(original)
    def gated(*args, **kwargs):
        result = original(*args, **kwargs)
        if not reached:
            reached.append(True)
            gate._wait()
        return result

    setattr(owner, method, gated)
