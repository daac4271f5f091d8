"""Tests that need a real part (PostgreSQL, a tmpfs mount) skip where it cannot run, and
fail in CI (`CI` set), where every real part must: a silent skip there would hide a
missing install step."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def require(part: str, reason: str) -> None:
    """Give up on this test because `part` is missing: a skip here, a failure in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{part} is required in CI and missing: {reason}", pytrace=False)
    pytest.skip(f"{part} missing: {reason}")


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's notation: 256k, 40m) mounted at `path`, for a disk that
    fills up; unmounted after (a test may unmount it earlier)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        require("a tmpfs mount", f"cannot mount one here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
