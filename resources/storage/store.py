"""Object stores for artifacts and the registry: a local directory, or S3.

Both give the registry what it needs to stay consistent without a database:
create-exactly-once (`create`) and compare-and-swap (`replace`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from resources.errors import ModelpubError
from resources.storage import digests
from resources.storage.digests import FileDigests


@dataclass(frozen=True)
class S3Access:
    """What another S3 client (tensorizer's reader, vLLM's loader) needs to read a store's
    URIs itself, since neither takes a boto3 client. Credentials are None when not asked for."""

    endpoint: str
    region: str
    env_prefix: str  # where its settings come from, for messages
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None


class StoreError(ModelpubError):
    """The store refused or could not be reached; the message says what to check.
    `transient`: the server was unreachable or overloaded, so a retry may succeed."""


class NotFound(StoreError):
    pass


class PartSink(Protocol):
    """Where the parts go: `upload(number, data, sha256)` for parts numbered from 1 (with
    their digest), in any order and from several threads; `complete(count)` once all are
    up; `abort()` on failure."""

    def upload(self, number: int, data: bytes, sha256: bytes) -> None: ...

    def complete(self, count: int) -> None: ...

    def abort(self) -> None: ...


class ObjectStore(ABC):
    """Keys are `/`-separated relative paths."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where a person (or vLLM) finds the object."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload `path` so that the object appears whole or not at all."""

    def put_staged(self, key: str, path: Path) -> None:
        """Like `put_file`, for a staged file the caller has no further use for: a store
        may move it into place instead of copying it. `path` may be gone afterwards."""
        self.put_file(key, path)

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    def part_sink(self, key: str) -> PartSink | None:
        """An upload to `key` that takes the file's parts as they are ready (what a
        resources/formats/streaming.py StreamedFile writes into); None where the store
        takes whole files only."""
        return None

    @contextmanager
    def staging_dir(self, key: str, staging: Path) -> Iterator[Path]:
        """Where a file bound for `key` is best written before `put_staged`: a directory
        of its own in `staging`, removed after (a retry of a run never shares one with a
        lost worker still writing, and a failed write leaves nothing), unless the store
        has a place that makes `put_staged` a rename."""
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging, prefix=".staging-") as tmp:
            yield Path(tmp)

    # How a file written through `staging_dir` lands, as a publish's step line says it.
    staged_writes = "whole file staged, then uploaded"

    @abstractmethod
    def read_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in order, a few MiB at a time: nothing staged on disk."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """The object open to be read in order into the reader's own buffers (`readinto`,
        then `close`): resources/formats/checked_read.py reads a tensors file so."""

    def sha256(self, key: str) -> str:
        """The object's whole-file sha256 (hex), read as a stream."""
        return digests.recompute({}, self.read_chunks(key))["sha256"]

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write `data` only if `key` does not exist; False if it already did."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and a version tag for `replace`, or None if absent."""

    @abstractmethod
    def replace(self, key: str, data: bytes, tag: str) -> bool:
        """Write `data` only if the object still has version `tag`; False if it changed."""

    @abstractmethod
    def unfinished_uploads(self, prefix: str) -> list[str]:
        """Keys under `prefix` whose upload began and never finished (a writer that died):
        invisible to `list`, but they take space until `abort_upload`."""

    @abstractmethod
    def abort_upload(self, key: str) -> None:
        """Discard the unfinished upload `key` (as `unfinished_uploads` names it)."""

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file with the object's bytes, for readers that need a path."""
        with tempfile.TemporaryDirectory(prefix="modelpub-") as tmp:
            dest = Path(tmp) / Path(key).name
            self.get_file(key, dest)
            yield dest

    @contextmanager
    def config_dir(self, prefix: str, files: FileDigests) -> Iterator[Path]:
        """A local directory with an artifact's files except the tensors: vLLM's `model`."""
        with tempfile.TemporaryDirectory(prefix="modelpub-config-") as tmp:
            for name in files:
                if not name.endswith(".tensors"):
                    dest = Path(tmp) / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.get_file(f"{prefix}/{name}", dest)
            yield Path(tmp)

    def s3_access(self, with_credentials: bool = True) -> S3Access | None:
        """How other clients reach this store over S3; None where its URIs are paths."""
        return None


def _fsync(path: Path) -> None:
    """Make a file's data, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore(ObjectStore):
    """A directory. Atomic renames give whole-or-nothing writes; link() gives O_EXCL."""

    def __init__(self, root: str | Path, file_mode: int = 0o644):
        self.root = Path(root).resolve()
        self.file_mode = file_mode

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return path

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def _staged(self, key: str) -> Path:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {target.parent}: {exc.strerror}") from None
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.fchmod(fd, self.file_mode)
        os.close(fd)
        return Path(tmp)

    staged_writes = "written in place, nothing staged"

    @contextmanager
    def staging_dir(self, key: str, staging: Path) -> Iterator[Path]:
        """A hidden directory beside `key`'s place, removed after: the tensors are written
        once, into the store, and renamed into place (no staging disk, no copy)."""
        parent = self.path(key).parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent, prefix=".staging-") as tmp:
            yield Path(tmp)

    def _write_staged(self, key: str, data: bytes) -> Path:
        tmp = self._staged(key)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def put_file(self, key: str, path: Path) -> None:
        tmp = self._staged(key)
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, self.file_mode)
            _fsync(tmp)
            os.replace(tmp, self.path(key))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {self.uri(key)}: {exc.strerror or exc}") from None
        _fsync(self.path(key).parent)

    def put_staged(self, key: str, path: Path) -> None:
        """A rename when `path` is on the store's filesystem: no second copy of a
        multi-gigabyte file. `path` should already be durable (fsynced)."""
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path, self.file_mode)
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise StoreError(f"cannot write {self.uri(key)}: {exc.strerror or exc}") from None
            self.put_file(key, path)  # staging is on another filesystem
            return
        _fsync(target.parent)

    def get_file(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.path(key), dest)
        except FileNotFoundError:
            raise NotFound(f"{self.uri(key)} does not exist") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.uri(key)} does not exist") from None

    def open_read(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.uri(key)} does not exist") from None

    def read_chunks(self, key: str) -> Iterator[bytes]:
        path = self.path(key)
        if not path.is_file():
            raise NotFound(f"{self.uri(key)} does not exist")
        return digests.file_chunks(path)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not self._hidden(p)
        )

    def _hidden(self, path: Path) -> bool:
        """A writer's own file: hidden itself (`.<name>.<random>`, a lock) or inside a
        hidden directory (`.staging-<random>/`, where tensors are written before the
        rename)."""
        return any(part.startswith(".") for part in path.relative_to(self.root).parts)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def create(self, key: str, data: bytes) -> bool:
        tmp = self._write_staged(key, data)
        try:
            os.link(tmp, self.path(key))
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get_bytes(key)
        except NotFound:
            return None
        return data, _sha256_tag(data)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock = self.path(key).with_name(f".{self.path(key).name}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def replace(self, key: str, data: bytes, tag: str) -> bool:
        with self._locked(key):
            current = self.read_versioned(key)
            if current is None or current[1] != tag:
                return False
            os.replace(self._write_staged(key, data), self.path(key))
            return True

    def unfinished_uploads(self, prefix: str) -> list[str]:
        """Staging files (`.<name>.<random>`, `.staging-<random>/<name>`) left behind by a
        writer that died."""
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and self._hidden(p) and not p.name.endswith(".lock")
        )

    def abort_upload(self, key: str) -> None:
        path = self.path(key)
        if self._hidden(path) and not path.name.endswith(".lock"):
            path.unlink(missing_ok=True)
            if path.parent.name.startswith(".staging-"):
                with contextlib.suppress(OSError):  # not empty: another file is left
                    path.parent.rmdir()

    @contextmanager
    def config_dir(self, prefix: str, files: FileDigests) -> Iterator[Path]:
        yield self.path(prefix)

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        if not self.exists(key):
            raise NotFound(f"{self.uri(key)} does not exist")
        yield self.path(key)
