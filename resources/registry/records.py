"""Typed records the registry keeps, parsed once where they are read.

Every record carries a `schema` number; a record written before the field existed
reads as schema 1 with the fields it has.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from resources import layout

SCHEMA = 2
RunState = Literal["running", "finished"] | None  # None: not known to this Dagster instance
# Why an alias history entry was written: the first three move the alias, the others
# only change whether a publish may move it.
Why = Literal["publish", "set", "rollback", "protect", "unprotect"]
MOVES = ("publish", "set", "rollback")
ReservationState = Literal["reserved", "publishing", "claimed"]


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

    def files_location(self, repo_id: str, suffix: str) -> tuple[str, str]:
        """(prefix, tensors file) of the version `repo_id@suffix` made so, in the store."""
        return layout.model_prefix(repo_id, suffix), layout.tensors_name(self.tensor_parallel_size)


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

    def files_location(self, repo_id: str, suffix: str) -> tuple[str, str]:
        """(prefix, tensors file) of the version `repo_id@suffix`: under its base version."""
        prefix = layout.adapter_prefix(self.base_repo_id, self.base_suffix, repo_id, suffix)
        return prefix, layout.ADAPTER_TENSORS_FILE


ArtifactSettings = Annotated[ModelSettings | AdapterSettings, Field(discriminator="kind")]


class _VersionFields(BaseModel):
    """What every version record holds besides the settings it was made with."""

    schema_: int = Field(1, alias="schema")  # records before the field existed: schema 1
    repo_id: str
    suffix: str
    hf_sha: str
    hf_ref: str | None = None
    catalog_key: str | None = None
    key_id: str | None = None
    artifact_uri: str
    tensors_uri: str
    files: dict[str, dict[str, Any]]  # name -> its digests.Entry (whole, or per part)
    versions: dict[str, str] = Field(default_factory=dict)  # packages that made it
    validation: dict[str, Any] = Field(default_factory=dict)  # the round trip's summary
    validation_report: str | None = None
    dagster_run_id: str | None = None
    published_at: str | None = None
    rotated_from: str | None = None
    # The fingerprint of the key that signed it (resources/registry/signing.py); absent,
    # not null, in records published before versions were signed, which read back unchanged.
    signing_key: str | None = Field(None, exclude_if=lambda fingerprint: fingerprint is None)

    @property
    def reference(self) -> str:
        return f"{self.repo_id}@{self.suffix}"

    def _settings(self, kind: type[BaseModel]) -> Any:
        """The fields of `kind` (the record's settings class) as that class."""
        return kind.model_validate(self.model_dump(include=set(kind.model_fields)))

    def to_dict(self) -> dict[str, Any]:
        """The record as it is stored, shown in the UI and printed by the CLI."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()


# Records are immutable once written: fields a newer writer added are kept, not dropped.
_RECORD_CONFIG = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class ModelVersion(ModelSettings, _VersionFields):
    """A published model version: its files under `vllm/<repo>/<suffix>/`."""

    model_config = _RECORD_CONFIG

    @property
    def settings(self) -> ModelSettings:
        return self._settings(ModelSettings)

    @property
    def location(self) -> tuple[str, str]:
        """(prefix, tensors file) of its files in the store."""
        return self.files_location(self.repo_id, self.suffix)


class AdapterVersion(AdapterSettings, _VersionFields):
    """A published LoRA adapter version: its files under the base version it fits."""

    model_config = _RECORD_CONFIG

    @property
    def settings(self) -> AdapterSettings:
        return self._settings(AdapterSettings)

    @property
    def location(self) -> tuple[str, str]:
        return self.files_location(self.repo_id, self.suffix)

    @property
    def base_reference(self) -> str:
        return f"{self.base_repo_id}@{self.base_suffix}"


VersionRecord = ModelVersion | AdapterVersion
_VERSION = TypeAdapter(Annotated[VersionRecord, Field(discriminator="kind")])


def parse_version(data: bytes | dict[str, Any]) -> VersionRecord:
    """A version record read from the registry (records before `kind` are models)."""
    raw = json.loads(data) if isinstance(data, bytes) else data
    return _VERSION.validate_python({"kind": "model", **raw})


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

    @classmethod
    def of_version(cls, record: VersionRecord) -> StagedArtifact:
        """An already published version, as the checks and publish steps take it."""
        prefix, tensors_file = record.location
        return cls(
            repo_id=record.repo_id,
            suffix=record.suffix,
            sha=record.hf_sha,
            prefix=prefix,
            tensors_file=tensors_file,
            key_id=record.key_id,
            files=record.files,
            reused=True,
            settings=record.settings,
        )

    def to_metadata(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class RoundTripProof(BaseModel):
    """What a run's passing round trip proved, handed to its publish step through Dagster's
    event log (never through the artifact store, which whoever signs must not trust): the
    whole-file sha256 of every file it read and checked, which is what gets signed."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    sha256: dict[str, str]  # file -> sha256 of the bytes the checks read
    summary: dict[str, Any] = Field(default_factory=dict)  # the report's summary
    report_uri: str | None = None  # the report kept beside the version, for people


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
    # Who holds the suffix now, changed only by compare-and-swap (Registry.take): its run
    # ("reserved"), its run writing the record ("publishing"), or a gc deleting what the
    # run left ("claimed"). Whichever of a publish and a gc swaps first wins.
    state: ReservationState = "reserved"
    state_by: str | None = None  # the run publishing it, or the gc that claimed it

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


class AliasEntry(BaseModel):
    """One line of an alias's history: when, from where to where, by whom and why.

    `by` is the Dagster run id for a publish, `user@host` for a person's command."""

    model_config = ConfigDict(frozen=True, extra="allow")

    at: str
    from_suffix: str | None
    to_suffix: str
    by: str
    why: Why
    reason: str | None = None


class AliasRecord(BaseModel):
    """`registry/<repo>/aliases/<alias>.json`: where the alias points, whether publishes
    may move it, and every change to it (see resources/registry/registry.py for why the history
    lives in this object).

    Records of schema 1 (`{"alias", "suffix", "moved_at"}`) have no history: they read
    with one entry synthesized from what they hold, by "(not recorded)".
    """

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    schema_: int = Field(1, alias="schema")
    alias: str
    suffix: str
    moved_at: str
    protected: bool = False
    history: list[AliasEntry]

    @model_validator(mode="before")
    @classmethod
    def _synthesize_history(cls, data: Any) -> Any:
        if isinstance(data, dict) and "history" not in data:
            first = {"at": data.get("moved_at"), "to_suffix": data.get("suffix")}
            entry = {**first, "from_suffix": None, "by": "(not recorded)", "why": "publish"}
            return {**data, "history": [entry]}
        return data

    @classmethod
    def new(cls, alias: str, entry: AliasEntry) -> AliasRecord:
        return cls(
            schema_=SCHEMA, alias=alias, suffix=entry.to_suffix, moved_at=entry.at, history=[entry]
        )

    def then(self, entry: AliasEntry) -> AliasRecord:
        """This record with `entry` appended and applied: a move or a protection change."""
        changes: dict[str, Any] = {"schema_": SCHEMA, "history": [*self.history, entry]}
        if entry.why in MOVES:
            changes |= {"suffix": entry.to_suffix, "moved_at": entry.at}
        else:
            changes["protected"] = entry.why == "protect"
        return self.model_copy(update=changes)

    @property
    def previous(self) -> str | None:
        """Where a rollback goes: the target before the current one, each rollback undoing
        one move (so rollback twice goes back two moves); None if there is none."""
        targets: list[str] = []
        for entry in self.history:
            if entry.why == "rollback" and targets:
                targets.pop()
            elif entry.why in MOVES:
                targets.append(entry.to_suffix)
        return targets[-2] if len(targets) > 1 else None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode()
