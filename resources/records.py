"""Typed records the registry keeps, parsed once where they are read.

Every record carries a `schema` number; a record written before the field existed
reads as schema 1 with the fields it has.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = 2


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a pid reused
    by another process from the one that was recorded."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Worker(BaseModel):
    """The process that runs a publish: gc tells a dead run from a live one by it."""

    model_config = ConfigDict(frozen=True)

    host: str
    pid: int
    started: int | None = None

    @classmethod
    def of(cls, pid: int) -> Worker:
        return cls(host=socket.gethostname(), pid=pid, started=_process_start(pid))

    def alive(self) -> bool | None:
        """False if this is the recorded host and the process is gone (or the pid now
        belongs to another process); None where that cannot be known from here."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = _process_start(self.pid)
        return self.started is None or started is None or started == self.started


class Reservation(BaseModel):
    """A suffix taken by one run before it uploads anything, and what that run will
    write: the files' prefix and the encryption key's id. gc reads these to find the
    leftovers of a run that never published, without guessing from paths."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    schema_: int = Field(1, alias="schema")
    suffix: str
    run_id: str
    reserved_at: str
    prefix: str | None = None  # schema 1: the model prefix of `suffix`
    key_id: str | None = None
    worker: Worker | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
