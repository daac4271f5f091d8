"""The one base of every error a person can act on.

Each carries `transient`: whether a retry may succeed (an unreachable server, a
rate-limited hub). Dagster steps turn it into a `Failure` that retries or not; the CLI
prints its message as one line and exits non-zero, never a traceback.
"""

from __future__ import annotations


class ModelpubError(Exception):
    transient: bool = False

    def __init__(self, message: str, transient: bool | None = None):
        super().__init__(message)
        if transient is not None:
            self.transient = transient
