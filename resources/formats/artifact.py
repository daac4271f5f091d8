"""A published artifact: the tensors (`model.tensors`, or one `model-rank-NNN.tensors` per
tensor-parallel rank in the vLLM-tensorized format) plus config/tokenizer files under one prefix.

Writing streams the tensors into the store's upload where the store can (S3: parts go up
while later tensors are still being serialized; resources/formats/streaming.py), else stages the
file locally and moves or uploads it; reading back checks the file hashes and every tensor
against the source checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypedDict

from resources.formats import tensorize
from resources.formats.checked_read import CheckedRead
from resources.formats.format import ArtifactFormat, Progress, artifact_format, no_progress
from resources.formats.streaming import StreamedFile
from resources.layout import TENSORS_FILE
from resources.storage import digests
from resources.storage.digests import FileDigests
from resources.storage.store import NotFound, ObjectStore, StoreError


@dataclass
class WrittenArtifact:
    files: FileDigests = field(default_factory=dict)
    serialize_s: float = 0.0
    upload_s: float = 0.0
    tensors_files: list[str] = field(default_factory=lambda: [TENSORS_FILE])
    # Streamed: the most bytes the staging directory held; serialize_s and upload_s then
    # both cover the overlapped write of the tensors. None: staged whole.
    peak_staging: int | None = None

    @property
    def tensors_bytes(self) -> int:
        return sum(self.files[name]["size"] for name in self.tensors_files)

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())


def write_artifact(
    store: ObjectStore,
    prefix: str,
    snapshot: Path,
    dtype: str | None,
    key: bytes | None,
    staging: Path,
    tensors_file: str = TENSORS_FILE,
    fmt: str = "hf",
    tensor_parallel_size: int = 1,
    progress: Progress = no_progress,
) -> WrittenArtifact:
    """Serialize the snapshot's weights to `tensors_file` and upload them with its other files.

    `dtype` None keeps the weights' own dtypes. `fmt` names the format that writes the
    tensors (resources/formats/format.py): for `vllm`, vLLM serializes its model, one file
    per rank, `tensors_file` then being the per-rank template. Tensors stream into a store
    that takes streams (S3), spooling a bounded part of them in `staging`; a local store
    has them written into a hidden directory beside their place and renamed into it, so
    `staging` is not used at all. On failure, whatever was uploaded under `prefix` is
    removed again (best effort; nothing there is visible to serving code until a
    registry record points at it).
    """
    form = artifact_format(fmt)
    key_ = f"{prefix}/{tensors_file}"
    sink = store.part_sink(key_) if form.streams else None
    if sink is not None:
        target = StreamedFile(sink, key_, staging, tensorize.part_size(snapshot))
        return _write_streamed(store, prefix, snapshot, form, dtype, key, target, progress)
    with store.staging_dir(key_, staging) as where:
        written = form.write_tensors(
            snapshot, where, dtype, key, tensors_file, tensor_parallel_size, progress
        )
        out = WrittenArtifact(
            serialize_s=written.seconds, tensors_files=[p.name for p in written.paths]
        )
        try:
            _upload(store, prefix, snapshot, out, written.paths, written.entries, progress)
        finally:
            for path in written.paths:
                path.unlink(missing_ok=True)
    return out


def _write_streamed(
    store: ObjectStore,
    prefix: str,
    snapshot: Path,
    form: ArtifactFormat,
    dtype: str | None,
    key: bytes | None,
    target: StreamedFile,
    progress: Progress,
) -> WrittenArtifact:
    """Serialize straight into the store's upload, then upload the config files. The
    tensors file's entry has a sha256 per part (resources/storage/digests.py): its first part,
    the header, is only final at the end, so no one pass sees the file in order."""
    tensors_file = target.key.rsplit("/", 1)[1]
    out = WrittenArtifact(tensors_files=[tensors_file])
    start = time.perf_counter()
    try:
        form.stream_tensors(snapshot, target, dtype, key, progress)
        entry = target.finish()
        # serializing and uploading overlap: both took the whole streamed write
        out.serialize_s = time.perf_counter() - start
    except BaseException:
        target.abort()
        raise
    out.peak_staging = target.peak_held
    name = f"{prefix}/{tensors_file}"
    try:
        out.files[tensors_file] = entry
        _upload(store, prefix, snapshot, out, [], {}, progress)
    except BaseException:
        with contextlib.suppress(Exception):
            store.delete(name)
        raise
    out.upload_s += out.serialize_s
    return out


def _upload(
    store: ObjectStore,
    prefix: str,
    snapshot: Path,
    out: WrittenArtifact,
    tensors: list[Path],
    entries: dict[str, digests.Entry | None],
    progress: Progress,
) -> None:
    """Upload the staged tensors files and the config files into `out.files`; on failure
    remove what this upload put under `prefix`."""
    uploads = [(p.name, p) for p in tensors] + [
        (str(p.relative_to(snapshot)), p) for p in tensorize.config_files(snapshot)
    ]
    start = time.perf_counter()
    uploaded: list[str] = []
    try:
        for done, (name, path) in enumerate(uploads):
            progress("upload", done, len(uploads))
            staged = path in tensors
            entry = entries.get(name) if staged else None
            out.files[name] = entry or digests.whole(
                path.stat().st_size, tensorize.sha256_file(path)
            )
            uploaded.append(name)
            (store.put_staged if staged else store.put_file)(f"{prefix}/{name}", path)
    except BaseException:
        for name in uploaded:
            with contextlib.suppress(Exception):  # the original error matters more
                store.delete(f"{prefix}/{name}")
        raise
    progress("upload", len(uploads), len(uploads))
    out.upload_s = time.perf_counter() - start


class FileRow(TypedDict):
    """One recorded file of the round trip's and integrity check's file table."""

    file: str
    size: int
    present: bool
    sha256_matches: bool
    sha256: str | None


@dataclass
class FileCheck:
    """A recorded file as stored now, read once: present, matching its record entry,
    and its whole-file sha256 (what the signature names)."""

    file: str
    size: int  # as recorded
    present: bool = True
    matches: bool = False
    sha256: str | None = None  # None: absent

    def row(self) -> FileRow:
        """The row reports and metadata show."""
        return FileRow(
            file=self.file,
            size=self.size,
            present=self.present,
            sha256_matches=self.matches,
            sha256=self.sha256,
        )


def check_files(
    store: ObjectStore,
    prefix: str,
    files: FileDigests,
    readers: Mapping[str, Callable[[BinaryIO], None]] | None = None,
) -> list[FileCheck]:
    """Each recorded file read once, as the store streams it: its digest against the
    record and its whole-file sha256; a file named in `readers` is also handed, as it
    streams, to its reader (tensorizer), which reports its own errors."""
    checks = []
    for name, expected in sorted(files.items()):
        check = FileCheck(name, expected["size"])
        reader = (readers or {}).get(name)
        try:
            if reader is None:
                digester = digests.Digester(expected, whole=True)
                for chunk in store.read_chunks(f"{prefix}/{name}"):
                    digester.update(chunk)
            else:
                stream = CheckedRead(store.open_read(f"{prefix}/{name}"), expected)
                reader(stream)
                digester = stream.finish()
            check.matches, check.sha256 = digester.matches(expected), digester.sha256
        except NotFound:
            check.present = False
        checks.append(check)
    return checks


def fetch_files(store: ObjectStore, prefix: str, files: FileDigests, dest: Path) -> list[Path]:
    """Download an artifact's `files` into `dest`, each checked against the sha256 in its
    version record as it lands (a mismatch is removed and refused)."""
    written = []
    for name, expected in sorted(files.items()):
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(f"{prefix}/{name}", path)
        if not digests.file_matches(path, expected):
            path.unlink()
            raise StoreError(
                f"{store.uri(f'{prefix}/{name}')} does not match the sha256 in its version "
                "record: it was changed after publishing; do not serve this version"
            )
        written.append(path)
    return written


def fetch_config(store: ObjectStore, prefix: str, files: FileDigests, dest: Path) -> list[Path]:
    """Download an artifact's files except the tensors (`model.tensors`, or one file per
    rank) into `dest`: the local `model` directory vLLM needs while the tensors stream
    from the store."""
    config = {name: f for name, f in files.items() if not name.endswith(".tensors")}
    return fetch_files(store, prefix, config, dest)
