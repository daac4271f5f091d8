"""Serialize Hugging Face weights with tensorizer, and read them back to prove it.

The HF-tensorized format (one `model.tensors` holding the checkpoint's state dict
under HF names) loads on every vLLM platform with `load_format="tensorizer"`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypedDict

import torch

from resources.errors import ModelpubError
from resources.formats.checked_read import ChangedInStore, checked_first
from resources.formats.direct import DirectFile
from resources.formats.parted import PartedFile
from resources.formats.streaming import PART_SIZE, part_size_for
from resources.storage import digests

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
BATCH_BYTES = 256 << 20  # source tensors held in memory at once while publishing


class TensorizeError(ModelpubError):
    pass


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".safetensors.index.json")


def weight_bytes(snapshot: Path) -> int:
    """The size of the snapshot's safetensors weights, the only ones published."""
    return sum(p.stat().st_size for p in snapshot.glob("*.safetensors"))


def part_size(snapshot: Path) -> int:
    """The part size of the snapshot's tensors file, streamed or hashed locally: parts for
    a file up to twice the checkpoint (an fp16 source cast to fp32)."""
    return part_size_for(2 * weight_bytes(snapshot))


def config_files(snapshot: Path) -> list[Path]:
    """Everything vLLM needs beside the weights: config, tokenizer, generation config."""
    return sorted(
        p
        for p in snapshot.rglob("*")
        if p.is_file()
        and not is_weight_file(p.name)
        and not any(part.startswith(".") for part in p.relative_to(snapshot).parts)
    )


def _safetensors_files(snapshot: Path) -> list[Path]:
    files = sorted(snapshot.glob("*.safetensors"))
    if not files:
        raise TensorizeError(
            f"{snapshot} has no *.safetensors weights; publish a revision with safetensors"
        )
    return files


# safetensors dtypes read straight into a tensor's own memory; others through safetensors
_READ_DIRECTLY = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class _Stored:
    """Where a tensor's bytes lie in its safetensors file."""

    file: Path
    offset: int
    size: int
    dtype: torch.dtype
    shape: list[int]


def _stored_tensors(file: Path) -> dict[str, _Stored]:
    """The tensors of a safetensors file (a little-endian u64 header length, the JSON
    header, the data) whose dtype is read directly."""
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    return {
        name: _Stored(file, 8 + length + start, end - start, _READ_DIRECTLY[e["dtype"]], e["shape"])
        for name, e in header.items()
        if name != "__metadata__" and e["dtype"] in _READ_DIRECTLY
        for start, end in [e["data_offsets"]]
    }


def _pread_tensor(stored: _Stored, out: torch.Tensor) -> torch.Tensor:
    """Read into `out` (uninitialised or reused uint8 memory of the tensor's size):
    safetensors' pread backend zeroes a buffer first, then copies it into the tensor."""
    view, done = memoryview(out.numpy()), 0
    fd = os.open(stored.file, os.O_RDONLY)
    try:
        while done < stored.size:
            n = os.preadv(fd, [view[done:]], stored.offset + done)
            if n == 0:
                raise TensorizeError(f"{stored.file} ends inside a tensor: truncated")
            done += n
    finally:
        os.close(fd)
    return out.view(stored.dtype).reshape(stored.shape)


def _fresh_buffer(size: int) -> torch.Tensor:
    return torch.empty(size, dtype=torch.uint8)


class _Recycler:
    """Read buffers lent to the last two batches, and those of earlier batches kept for
    reuse. Faulting in fresh pages costs several times the read itself (0.42 against
    0.11 CPU-s/GB), and a publish frees each batch just as it reads more tensors of the
    same shapes, so a batch's buffers serve the batches after the next; at most
    `keep` bytes of them wait unused (the oldest are freed)."""

    def __init__(self, keep: int):
        self.lent: list[list[torch.Tensor]] = [[], []]
        self.free: dict[int, list[torch.Tensor]] = {}  # by size, oldest first
        self.idle, self.keep = 0, keep

    def take(self, size: int) -> torch.Tensor:
        spare = self.free.get(size)
        if spare:
            self.idle -= size
            buffer = spare.pop()
        else:
            buffer = _fresh_buffer(size)
        self.lent[-1].append(buffer)
        return buffer

    def next_batch(self) -> None:
        """The batch before last is done with: its buffers may be read into again."""
        for buffer in self.lent.pop(0):
            self.free.setdefault(buffer.numel(), []).append(buffer)
            self.idle += buffer.numel()
        self.lent.append([])
        for spare in self.free.values():
            while spare and self.idle > self.keep:
                self.idle -= spare.pop(0).numel()


class SourceCheckpoint:
    """The snapshot's safetensors files, read one tensor at a time, floating point
    tensors cast to `dtype` (None keeps theirs). Each tensor owns its memory: read with
    pread, not a view of a file mapping whose pages would stay resident until closed."""

    def __init__(self, snapshot: Path, dtype: str | None):
        from safetensors import safe_open

        self.target = DTYPES[dtype] if dtype else None
        self._files = {}
        self._stored: dict[str, _Stored] = {}
        for file in _safetensors_files(snapshot):
            handle = safe_open(file, framework="pt", backend="pread")  # checks the header
            self._files.update(dict.fromkeys(handle.keys(), handle))
            self._stored.update(_stored_tensors(file))

    def names(self) -> list[str]:
        return list(self._files)

    def get(self, name: str, recycler: _Recycler | None = None) -> torch.Tensor | None:
        handle = self._files.get(name)
        if handle is None:
            return None
        stored = self._stored.get(name)
        if stored is None:
            tensor = handle.get_tensor(name)
        else:
            take = recycler.take if recycler else _fresh_buffer
            tensor = _pread_tensor(stored, take(stored.size))
        return tensor.to(self.target) if self.target and tensor.is_floating_point() else tensor

    def batches(
        self, batch_bytes: int = BATCH_BYTES, recycle: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """All tensors in batches of about `batch_bytes`, in file order. With `recycle`,
        a batch's memory is read into again two batches later: only for a consumer done
        with each batch (in-place encryption included) before it takes the one after
        the next, as `serialize` with `consume` is, read ahead by one batch or not."""
        recycler = _Recycler(batch_bytes) if recycle else None
        batch: dict[str, torch.Tensor] = {}
        size = 0
        for name in self.names():
            batch[name] = self.get(name, recycler)
            size += batch[name].nbytes
            if size >= batch_bytes:
                yield batch
                batch, size = {}, 0
                if recycler:
                    recycler.next_batch()
        if batch:
            yield batch


def iter_source_weights(
    snapshot: Path, dtype: str | None, batch_bytes: int = BATCH_BYTES
) -> Iterator[dict[str, torch.Tensor]]:
    """The checkpoint's tensors in batches, so a publish holds a batch, not the model."""
    return SourceCheckpoint(snapshot, dtype).batches(batch_bytes)


def load_source_weights(snapshot: Path, dtype: str | None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, floating point ones cast to `dtype` (None keeps theirs)."""
    weights: dict[str, torch.Tensor] = {}
    for batch in iter_source_weights(snapshot, dtype):
        weights.update(batch)
    return weights


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    buf = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(buf[:n])
    return digest.hexdigest()


@dataclass(frozen=True)
class SerializeStats:
    bytes_written: int
    seconds: float
    # The file's record entry (resources/storage/digests.py: its sha256 per part);
    # None for a stream.
    entry: digests.Entry | None


def _prefetched(batches: Iterable[Mapping]) -> Iterator[Mapping]:
    """`batches`, each read while the one before is being written."""
    with ThreadPoolExecutor(1, thread_name_prefix="modelpub-prefetch") as pool:
        it = iter(batches)
        pending = pool.submit(next, it, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, it, None)
            yield batch
            del batch  # hold at most two batches


@functools.cache
def _serializer_class():
    """tensorizer's serializer, able to skip restoring tensors it encrypted in place.

    tensorizer encrypts each tensor in place, writes it, then decrypts it again to give
    the caller its tensors back: a second full cipher pass. When `owned` is set, the
    caller gives its tensors up, and tensorizer treats them as its own temporaries
    (the private `_temporary_buffer` flag of the pinned tensorizer), skipping the
    restore. A tensorizer without that flag always restores.
    """
    import inspect

    from tensorizer import TensorSerializer

    flag = "_temporary_buffer" in inspect.signature(TensorSerializer._write_tensor).parameters

    class Serializer(TensorSerializer):
        owned = False

        def _write_tensor(self, *args, **kwargs):
            if self.owned and flag:
                kwargs["_temporary_buffer"] = True
            return super()._write_tensor(*args, **kwargs)

    return Serializer


def _distinct_memory(batch: Mapping[str, torch.Tensor]) -> bool:
    """No two tensors share storage, so in-place encryption of one cannot garble another."""
    storages = [t.untyped_storage().data_ptr() for t in batch.values()]
    return len(set(storages)) == len(storages)


def serialize(
    weights: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
    dest: Path | BinaryIO,
    key: bytes | None,
    consume: bool = False,
    written: Callable[[int], None] | None = None,
    part_size: int = PART_SIZE,
) -> SerializeStats:
    """Write `weights` (one mapping, or batches of them, each read while the one before
    is written) to the local file `dest`, encrypted with `key` when given; returns once
    the file is durable, with its record entry (the sha256 of each `part_size` slice,
    hashed in memory as the batches are written, each written with O_DIRECT:
    resources.formats.direct.DirectFile). `dest` may be a file object instead (a
    resources.formats.parted.PartedFile, whose `finish` the caller calls): its size is
    then what it was told, no entry.

    With `consume`, the caller gives the tensors up: each batch is emptied once
    written and its tensors may be left encrypted, which saves a cipher pass.
    `written` is told how many tensors each batch held, once it is written.
    """
    from tensorizer import EncryptionParams

    encryption = EncryptionParams(key) if key is not None else None
    prefetched = None if isinstance(weights, Mapping) else _prefetched(weights)
    batches = [weights] if prefetched is None else prefetched
    start = time.perf_counter()
    local = DirectFile(dest, part_size) if isinstance(dest, Path) else None
    target = local if local is not None else dest
    try:
        serializer = _serializer_class()(target, encryption=encryption)
        if isinstance(target, PartedFile):
            target.prologue_written()
        try:
            for given in batches:
                batch, serializer.owned = given, consume
                if encryption is not None and not _distinct_memory(given):
                    # tensorizer's in-place encryption garbles tensors that share memory
                    # (views of one buffer; CryptographyError on load): copy them apart
                    batch, serializer.owned = {n: t.clone() for n, t in given.items()}, True
                serializer.write_state_dict(batch)
                if written is not None:
                    written(len(batch))
                if consume:
                    given.clear()
        finally:
            serializer.close()
        if local is None:
            return SerializeStats(dest.seek(0, os.SEEK_END), time.perf_counter() - start, None)
        entry = local.finish()
    except BaseException:
        if local is not None:
            local.abort()
        raise
    finally:
        if prefetched is not None:
            prefetched.close()  # its reader thread, even where tensorizer failed
    return SerializeStats(entry["size"], time.perf_counter() - start, entry)


@contextmanager
def _deserializer(
    source: str | BinaryIO, key: bytes | None, stream_kwargs: dict | None, streaming: bool
):
    """`source`: a path or URI tensorizer opens, or a file already open (a
    resources.formats.checked_read.CheckedRead). Streaming: tensors read on demand by one reader
    thread (decryption still runs on every core); more readers read ahead without bound,
    holding most of the model. tensorizer checks each tensor's sha256 against its header
    unless every byte it reads was already checked against the record, part by part."""
    from tensorizer import DecryptionParams, TensorDeserializer
    from tensorizer.stream_io import open_stream

    decryption = DecryptionParams.from_key(key) if key is not None else None
    opened = (
        open_stream(source, "rb", **(stream_kwargs or {}))
        if isinstance(source, str)
        else nullcontext(source)
    )
    with (
        opened as stream,
        TensorDeserializer(
            stream,
            device="cpu",
            lazy_load=streaming,
            num_readers=1 if streaming else None,
            verify_hash=not checked_first(source),
            encryption=decryption,
        ) as tensors,
    ):
        yield tensors


def deserialize(
    source: str, key: bytes | None, stream_kwargs: dict | None = None
) -> dict[str, torch.Tensor]:
    """Read every tensor back with hash verification; raises on tampering or a wrong key."""
    with _deserializer(source, key, stream_kwargs, streaming=False) as tensors:
        # not lazy: every tensor is read, decrypted and verified into memory of its own
        # before the constructor returns, so it outlives the deserializer uncopied
        return dict(tensors.items())


def iter_deserialized(
    source: str | BinaryIO, key: bytes | None, stream_kwargs: dict | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """`deserialize`, one (name, tensor) at a time: memory for a tensor, not the model."""
    with _deserializer(source, key, stream_kwargs, streaming=True) as tensors:
        # tensorizer keeps every tensor it has read in a private cache (`_cache` in the
        # pinned version), which would hold the whole model by the end: emptied as we go
        cache = getattr(tensors, "_cache", {})
        for _, _, name, tensor in tensors.read_tensors():
            yield name, tensor
            del tensor
            cache.clear()


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Compare bit patterns, so NaNs and -0.0 count as equal only when identical."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


class TensorRow(TypedDict):
    """One tensor of the round trip's comparison table."""

    name: str
    source_dtype: str | None  # None: not in the source (or no source counterpart)
    published_dtype: str | None  # None: not in the published artifact
    shape: list[int]
    numel: int
    equal: bool


def describe_weights(tensors: dict[str, torch.Tensor], prefix: str = "") -> list[TensorRow]:
    """One row per tensor that has no source counterpart (the vLLM-tensorized format): it was
    read back with its hash verified, which is all `equal` can claim for it."""
    return [
        TensorRow(
            name=f"{prefix}{name}",
            source_dtype=None,
            published_dtype=str(t.dtype).removeprefix("torch."),
            shape=list(t.shape),
            numel=t.numel(),
            equal=True,
        )
        for name, t in sorted(tensors.items())
    ]


def compare_tensor(name: str, a: torch.Tensor | None, b: torch.Tensor | None) -> TensorRow:
    """Does the published tensor `b` equal the source tensor `a`? (None: missing)"""
    return TensorRow(
        name=name,
        source_dtype=str(a.dtype).removeprefix("torch.") if a is not None else None,
        published_dtype=str(b.dtype).removeprefix("torch.") if b is not None else None,
        shape=list(a.shape if a is not None else b.shape),
        numel=(a if a is not None else b).numel(),
        equal=bool(
            a is not None
            and b is not None
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(_raw_bytes(a), _raw_bytes(b))
        ),
    )


def compare_weights(
    source: dict[str, torch.Tensor], published: dict[str, torch.Tensor]
) -> list[TensorRow]:
    """One row per tensor name in either side: does the published tensor equal the source?"""
    return [
        compare_tensor(name, source.get(name), published.get(name))
        for name in sorted(set(source) | set(published))
    ]


def compare_published(
    source: SourceCheckpoint, published: Iterable[tuple[str, torch.Tensor]]
) -> list[TensorRow]:
    """`compare_weights`, holding one tensor of each side at a time, not two models."""
    rows, seen = [], set()
    for name, tensor in published:
        rows.append(compare_tensor(name, source.get(name), tensor))
        seen.add(name)
    rows += [compare_tensor(n, source.get(n), None) for n in source.names() if n not in seen]
    return sorted(rows, key=lambda r: r["name"])


def is_decryption_error(exc: Exception) -> bool:
    """Whether tensorizer failed to decrypt (a wrong key, or changed ciphertext)."""
    from tensorizer.serialization import CryptographyError

    return isinstance(exc, CryptographyError)


def describe_load_error(exc: Exception, uri: str, key_id: str | None, checked: bool = False) -> str:
    """Say what a failure to read the artifact means for the person who sees it.
    `checked`: every byte read was checked against the record first
    (resources/formats/checked_read.py `checked_first`), so the file is not the cause."""
    from tensorizer.serialization import HashMismatchError

    if is_decryption_error(exc):
        cause = (
            "its bytes are the ones published, so the key is not the one it was encrypted with"
            if checked
            else "the key is wrong or the file was modified after publishing"
        )
        return f"key {key_id!r} does not decrypt {uri}: {cause} ({exc})"
    if isinstance(exc, ChangedInStore):
        return f"{uri} was modified after publishing: {exc}; do not serve this version"
    if isinstance(exc, HashMismatchError):
        return f"{uri} is corrupted: a tensor's hash does not match its header ({exc})"
    return f"cannot read {uri}: {type(exc).__name__}: {exc}"
