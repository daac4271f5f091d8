"""A stored file read once for a reader and for its checks at the same time.

`modelpub verify` and the round-trip check each need three things of a tensors file:
its digest against the version record, its whole-file sha256 (what the signature
names) and every tensor decrypted and hash-verified by tensorizer. `CheckedRead` gives
tensorizer a file whose bytes a thread fetches from the store a few chunks ahead,
hashing each chunk on its way: one read of the object instead of three, and the fetch
and hashing run on another core than tensorizer's decryption and verification.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Iterable

from resources.storage import digests

DEPTH = 4  # chunks (of digests.CHUNK, 8 MiB from the stores) fetched ahead of the reader


class CheckedRead(io.RawIOBase):
    """`chunks` (a stored file's bytes, in order) as a readable file that only goes
    forward; `finish()` reads what the reader left and returns the file's digests."""

    def __init__(self, chunks: Iterable[bytes], entry: digests.Entry):
        super().__init__()
        self.digester = digests.Digester(entry, whole=True)
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(DEPTH)
        self._chunk, self._at, self._pos, self._ended = memoryview(b""), 0, 0, False
        self._error: BaseException | None = None  # the store's, raised again by finish
        self._thread = threading.Thread(
            target=self._fetch, args=(chunks,), name="modelpub-read", daemon=True
        )
        self._thread.start()

    def _fetch(self, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                self.digester.update(chunk)
                self._queue.put(chunk)
            self._queue.put(None)
        except BaseException as exc:  # noqa: BLE001 - raised in the reader instead
            self._queue.put(exc)

    def _next(self) -> bool:
        """Whether bytes are left to read (fetching the next chunk when needed)."""
        while self._at == len(self._chunk):
            if self._ended:
                return False
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._ended, self._error = True, item
                raise item
            if item is None:
                self._ended = True
                return False
            self._chunk, self._at = memoryview(item).cast("B"), 0
        return True

    # --- what tensorizer calls --------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos - self._at:
            raise io.UnsupportedOperation("a checked read only goes forward")
        if target < self._pos:  # back within the chunk at hand
            self._at -= self._pos - target
            self._pos = target
        while self._pos < target and self._next():
            step = min(target - self._pos, len(self._chunk) - self._at)
            self._at += step
            self._pos += step
        return self._pos

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._next():
            step = min(len(out) - done, len(self._chunk) - self._at)
            out[done : done + step] = self._chunk[self._at : self._at + step]
            self._at += step
            done += step
        self._pos += done
        return done

    def close(self) -> None:
        """tensorizer closes the file when it is done with it; `finish` ends the read."""

    # --- what the checker calls ---------------------------------------------------------

    def finish(self) -> digests.Digester:
        """Read the rest (tensorizer need not read to the end, nor at all after an
        error) and return the digests of the whole file. Raises the store's error where
        the read itself failed."""
        if self._error is None:
            self._chunk, self._at = memoryview(b""), 0
            while self._next():
                self._chunk, self._at = memoryview(b""), 0
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.digester
