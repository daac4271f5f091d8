"""Typed records the registry keeps, parsed once where they are read.

Every record carries a `schema` number; a record written before the field existed
reads as schema 1 with the fields it has.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA = 2
RunState = Literal["running", "finished"] | None  # None: not known to this Dagster instance


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


class ModelSettings(BaseModel):
    """How a model version was made: what makes two versions of one sha the same."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["model"] = "model"
    dtype: str
    encrypted: bool
    format: Literal["hf", "vllm"] = "hf"
    tensor_parallel_size: int = 1


class AdapterSettings(BaseModel):
    """How an adapter version was made, and the base version it was checked against."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["adapter"] = "adapter"
    format: Literal["peft-lora"] = "peft-lora"
    dtype: str
    rank: int
    encrypted: bool
    base_repo_id: str
    base_suffix: str
    base_hf_sha: str

    @property
    def tensor_parallel_size(self) -> int:
        return 1


ArtifactSettings = Annotated[ModelSettings | AdapterSettings, Field(discriminator="kind")]
_SETTINGS = TypeAdapter(ArtifactSettings)


def settings_of(record: dict[str, Any]) -> ModelSettings | AdapterSettings:
    """The settings a version record was made with (records before `kind` are models)."""
    return _SETTINGS.validate_python({"kind": "model", **record})


class StagedArtifact(BaseModel):
    """What a run's `tensorized_*` step hands its checks and its publish step: the
    version it wrote (or reuses), where, with which key and file digests."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: int = Field(SCHEMA, alias="schema")
    repo_id: str
    suffix: str
    sha: str
    prefix: str
    tensors_file: str
    key_id: str | None
    files: dict[str, dict[str, Any]]
    reused: bool
    settings: ArtifactSettings

    @property
    def reference(self) -> str:
        return f"{self.repo_id}@{self.suffix}"

    def to_metadata(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


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
    sha: str | None = None  # schema 1: not recorded
    settings: ArtifactSettings | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    def abandoned(
        self, run_state: Callable[[str], RunState], older_than: timedelta, now: datetime
    ) -> str | None:
        """Why no run will finish this suffix, or None while its run may still publish it."""
        state = run_state(self.run_id)
        if state == "finished":
            return f"run {self.run_id} ended without publishing it"
        worker = self.worker
        if worker is not None and worker.alive() is False:
            return f"run {self.run_id}'s process (pid {worker.pid} on {worker.host}) is gone"
        age = now - datetime.fromisoformat(self.reserved_at)
        if age < older_than:
            return None
        known = "is still marked running" if state == "running" else "is unknown to this instance"
        return f"reserved {age} ago by run {self.run_id}, which {known}"
