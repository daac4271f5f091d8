"""The digest a version record keeps for each file, in one of two schemes.

- `{"size", "sha256"}`: the whole file's sha256 (config files, vLLM-serialized tensors,
  and every record written before streaming).
- `{"size", "part_size", "parts_sha256"}`: the sha256 of each `part_size` slice, in
  order (the last may be shorter). A tensors file modelpub serializes, streamed or
  written locally, is known only part by part, its first part (the header) last, so
  no single pass sees it in order; each part is hashed as soon as it is final, not in a
  pass after the write. A streamed part's digest is also what S3 checked when the part
  arrived (ChecksumSHA256), like S3's composite checksums and OpenSSF model signing's
  sharded hashing.

`chunks_match`, `file_matches` and `Digester` recompute whichever scheme the entry names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

CHUNK = 8 << 20


class WholeDigest(TypedDict):
    size: int
    sha256: str


class PartsDigest(TypedDict):
    size: int
    part_size: int
    parts_sha256: list[str]


Entry = WholeDigest | PartsDigest  # plain dicts as records hold them, in either scheme
FileDigests = dict[str, Entry]  # a version's file name -> its entry


def whole(size: int, sha256: str) -> WholeDigest:
    return {"size": size, "sha256": sha256}


def parts(size: int, part_size: int, parts_sha256: list[str]) -> PartsDigest:
    return {"size": size, "part_size": part_size, "parts_sha256": parts_sha256}


class Digester:
    """A file's digest in an entry's scheme, computed as its bytes pass in order; with
    `whole`, its whole-file sha256 too (what a signature names), in the same pass."""

    def __init__(self, entry: Entry, whole: bool = False):
        self.part_size: int | None = entry.get("part_size")
        self.size = 0
        self._whole = hashlib.sha256() if whole or self.part_size is None else None
        self._parts: list[str] = []
        self._part, self._filled = hashlib.sha256(), 0

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk).cast("B")
        self.update_whole(view)
        self.size += len(view)
        while self.part_size is not None and view:
            take = view[: self.part_size - self._filled]
            self._part.update(take)
            self._filled += len(take)
            view = view[len(take) :]
            if self._filled == self.part_size:
                self._parts.append(self._part.hexdigest())
                self._part, self._filled = hashlib.sha256(), 0

    def update_whole(self, view: memoryview) -> None:
        """The whole-file sha256 alone, for a reader whose parts are hashed elsewhere
        (`add_part`): a thread of its own may run it (it sees every byte, in order)."""
        if self._whole is not None:
            self._whole.update(view)

    def add_part(self, size: int, sha256: str) -> None:
        """A part hashed elsewhere (parts are independent: any thread may hash one),
        added in order, the last one short, in place of `update`."""
        self.size += size
        self._parts.append(sha256)

    @property
    def parts(self) -> list[str]:
        """The sha256 of each whole part read so far, in order."""
        return self._parts

    @property
    def sha256(self) -> str | None:
        """The whole file's sha256, where it was computed."""
        return self._whole.hexdigest() if self._whole is not None else None

    def entry(self) -> Entry:
        """What was read, as an entry of the scheme it was made for."""
        if self.part_size is None:
            return whole(self.size, self._whole.hexdigest())
        last = [self._part.hexdigest()] if self._filled or not self._parts else []
        return parts(self.size, self.part_size, self._parts + last)

    def matches(self, entry: Entry) -> bool:
        """Whether what was read is the file the entry describes."""
        return self.entry() == _digest_fields(entry)


def recompute(entry: Entry, chunks: Iterable[bytes]) -> Entry:
    """The entry's scheme recomputed over `chunks` (the file's bytes, in order)."""
    digester = Digester(entry)
    for chunk in chunks:
        digester.update(chunk)
    return digester.entry()


def file_chunks(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def file_matches(path: Path, entry: Entry) -> bool:
    """Whether the local file is the one the entry describes."""
    return chunks_match(file_chunks(path), entry)


def chunks_match(chunks: Iterable[bytes], entry: Entry) -> bool:
    """Whether `chunks` (a file's bytes, in order) are the file the entry describes."""
    return recompute(entry, chunks) == _digest_fields(entry)


def short(entry: Entry) -> str:
    """A few characters to show a person, naming the scheme where it is per part."""
    if "sha256" in entry:
        return entry["sha256"][:16] + "…"
    joined = hashlib.sha256("".join(entry["parts_sha256"]).encode()).hexdigest()
    return f"{len(entry['parts_sha256'])} parts, {joined[:12]}…"


def _digest_fields(entry: Entry) -> Entry:
    return {k: entry[k] for k in ("size", "sha256", "part_size", "parts_sha256") if k in entry}
