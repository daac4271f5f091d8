"""The digest a version record keeps for each file, in one of two schemes.

- `{"size", "sha256"}`: the whole file's sha256 (every staged file, and every record
  written before streaming).
- `{"size", "part_size", "parts_sha256"}`: the sha256 of each `part_size` slice, in
  order (the last may be shorter). A streamed tensors file is known only part by part,
  its first part (the header) last, so no single pass sees it in order; each part's
  digest is also what S3 checked when the part arrived (ChecksumSHA256), like S3's
  composite checksums and OpenSSF model signing's sharded hashing.

`entry_matches` and `file_matches` recompute whichever the entry names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 8 << 20

Entry = dict[str, Any]


def whole(size: int, sha256: str) -> Entry:
    return {"size": size, "sha256": sha256}


def parts(size: int, part_size: int, parts_sha256: list[str]) -> Entry:
    return {"size": size, "part_size": part_size, "parts_sha256": parts_sha256}


def recompute(entry: Entry, chunks: Iterable[bytes]) -> Entry:
    """The entry's scheme recomputed over `chunks` (the file's bytes, in order)."""
    part_size = entry.get("part_size")
    if part_size is None:
        digest, size = hashlib.sha256(), 0
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
        return whole(size, digest.hexdigest())
    digests, current, filled, size = [], hashlib.sha256(), 0, 0
    for chunk in chunks:
        view = memoryview(chunk)
        size += len(view)
        while view:
            take = view[: part_size - filled]
            current.update(take)
            filled += len(take)
            view = view[len(take) :]
            if filled == part_size:
                digests.append(current.hexdigest())
                current, filled = hashlib.sha256(), 0
    if filled or not digests:
        digests.append(current.hexdigest())
    return parts(size, part_size, digests)


def file_chunks(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def file_matches(path: Path, entry: Entry) -> bool:
    """Whether the local file is the one the entry describes."""
    return recompute(entry, file_chunks(path)) == _digest_fields(entry)


def chunks_match(chunks: Iterable[bytes], entry: Entry) -> bool:
    return recompute(entry, chunks) == _digest_fields(entry)


def short(entry: Entry) -> str:
    """A few characters to show a person, naming the scheme where it is per part."""
    if "sha256" in entry:
        return entry["sha256"][:16] + "…"
    joined = hashlib.sha256("".join(entry["parts_sha256"]).encode()).hexdigest()
    return f"{len(entry['parts_sha256'])} parts, {joined[:12]}…"


def _digest_fields(entry: Entry) -> Entry:
    return {k: entry[k] for k in ("size", "sha256", "part_size", "parts_sha256") if k in entry}
