"""Tests that need a real part (PostgreSQL, a tmpfs mount) skip where it cannot run, and
fail in CI (`CI` set), where every real part must: a silent skip there would hide a
missing install step."""

from __future__ import annotations

import os

import pytest


def require(part: str, reason: str) -> None:
    """Give up on this test because `part` is missing: a skip here, a failure in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{part} is required in CI and missing: {reason}", pytrace=False)
    pytest.skip(f"{part} missing: {reason}")
