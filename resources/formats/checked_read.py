"""A stored file read once for a reader and for its checks at the same time, checked
before the reader sees it.

The serve loader, `modelpub verify` and the round-trip check each read a tensors file
through tensorizer and need its digest against the version record (the signed record,
where one is). `CheckedRead` gives tensorizer a file whose bytes a thread fetches from the
store ahead of the reader, hashing them on their way. Where the record keeps a digest per
part (every tensors file modelpub writes), each part is held back until its sha256 is the
one the record names: tensorizer, and vLLM after it, only ever see bytes that were
checked, its header included, and a file changed in the store fails at the first changed
part. Those bytes are then exactly what was published and proved, so tensorizer's own
per-tensor hashes add nothing and are skipped (`checks_parts`). A whole-file digest
(records from before streaming) can only be compared at the end, in `finish`.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from collections.abc import Iterable

from resources.storage import digests
from resources.storage.store import StoreError

DEPTH = 4  # chunks (of digests.CHUNK, 8 MiB from the stores) checked ahead of the reader


class ChangedInStore(StoreError):
    """A part of the file is not the one its record names."""


def checked_first(stream: object) -> bool:
    """Whether every byte a reader gets from `stream` was checked against the record
    before it got it (a CheckedRead of a file whose record keeps a digest per part)."""
    return isinstance(stream, CheckedRead) and stream.checks_parts


class CheckedRead(io.RawIOBase):
    """`chunks` (a stored file's bytes, in order) as a readable file that only goes
    forward; `finish()` reads what the reader left and returns the file's digests.
    `whole`: compute the whole file's sha256 too (what a signature names), in the same
    pass."""

    def __init__(self, chunks: Iterable[bytes], entry: digests.Entry, whole: bool = True):
        super().__init__()
        self.digester = digests.Digester(entry, whole=whole)
        self.checks_parts = "parts_sha256" in entry
        self.changed = False  # a part differed from the record: nothing from it on is read
        self._entry = entry
        self._checked = 0  # parts found to be the recorded ones
        self._queue: queue.Queue[memoryview | BaseException | None] = queue.Queue(DEPTH)
        self._chunk, self._at, self._pos, self._ended = memoryview(b""), 0, 0, False
        self._error: BaseException | None = None  # the store's, raised again by finish
        self._stopped = False  # `stop`: read no further
        self._failure: BaseException | None = None  # what every read raises from here on
        # the whole file's sha256 on a thread of its own where parts are checked too:
        # two hashes of every byte, on two cores
        self._wholes: queue.Queue[memoryview | None] | None = None
        self._threads = [
            threading.Thread(target=self._fetch, args=(chunks,), name="modelpub-read", daemon=True)
        ]
        if whole and self.checks_parts:
            self._wholes = queue.Queue(2 * DEPTH)
            self._threads.append(
                threading.Thread(target=self._hash_whole, name="modelpub-hash", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def _fetch(self, chunks: Iterable[bytes]) -> None:
        held = _Held()  # bytes of the part not yet checked
        chunks = iter(chunks)
        try:
            for chunk in chunks:
                if self._stopped:
                    return
                view = memoryview(chunk).cast("B")
                if self._wholes is None:
                    self.digester.update(view)
                else:
                    self._wholes.put(view)
                    self.digester.update_parts(view)
                if self.changed:
                    continue  # hashed for the digests `finish` reports, never handed on
                if not self.checks_parts:
                    self._queue.put(view)
                    continue
                held.add(view)
                self._hand_on(held, self._checked_bytes())
            if self.checks_parts and not self.changed:
                if not self.digester.matches(self._entry):
                    self._refuse(self._end_difference())
                self._hand_on(held, held.end)
            if not self.changed:
                self._queue.put(None)
        except BaseException as exc:  # noqa: BLE001 - raised in the reader instead
            self._error = exc
            if not self.changed:
                self._queue.put(exc)
        finally:
            if self._wholes is not None:
                self._wholes.put(None)
            if hasattr(chunks, "close"):
                chunks.close()  # the store's stream, where it was left before its end

    def _hash_whole(self) -> None:
        while (view := self._wholes.get()) is not None:
            self.digester.update_whole(view)

    def _checked_bytes(self) -> int:
        """How far the file is known to be what the record names: up to its last whole
        part whose sha256 is the recorded one (and no further, from a part that is not)."""
        done, expected = self.digester.parts, self._entry["parts_sha256"]
        for index in range(self._checked, len(done)):
            if index >= len(expected) or done[index] != expected[index]:
                self._refuse(f"part {index} of the file is not the one its record names")
                return 0
        self._checked = len(done)
        return self._checked * self._entry["part_size"]

    def _end_difference(self) -> str:
        """What differs at the end, every part before the last having matched."""
        read, size = self.digester.entry(), self._entry["size"]
        if read["size"] != size:
            return f"it holds {read['size']} bytes where its record names {size}"
        return f"part {len(read['parts_sha256']) - 1} of the file is not the one its record names"

    def _refuse(self, problem: str) -> None:
        self.changed = True
        self._queue.put(ChangedInStore(problem))

    def _hand_on(self, held: _Held, upto: int) -> None:
        if not self.changed:
            for view in held.take(upto):
                self._queue.put(view)

    def _next(self) -> bool:
        """Whether bytes are left to read (fetching the next chunk when needed)."""
        while self._at == len(self._chunk):
            if self._failure is not None:
                raise self._failure
            if self._ended:
                return False
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._failure = item
                continue
            if item is None:
                self._ended = True
                return False
            self._chunk, self._at = item, 0
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
        while done < len(out):
            try:
                if not self._next():
                    break
            except Exception:
                if done:
                    break  # the bytes before the failure first; the next read raises it
                raise
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
        error) and return the digests of the whole file (a file that `changed` is still
        hashed to its end, never handed on). Raises the store's error where the read
        itself failed."""
        try:
            self._chunk, self._at = memoryview(b""), 0
            while self._next():
                self._chunk, self._at = memoryview(b""), 0
        except Exception:  # noqa: BLE001 - a changed part (`changed`) or the store's, raised below
            pass
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error
        return self.digester

    def stop(self) -> None:
        """End the read where it is, for a reader that failed or left early: no more of
        the file is fetched (a wrong key found at the first tensor does not read the
        whole model for nothing). Where every byte handed on was checked first
        (`checks_parts`), what the reader hit cannot be a change in the store, so the
        rest is not needed to say what went wrong; a changed part found before the stop
        still sets `changed`. A read that ended already is left as it is."""
        self._stopped = True
        while any(thread.is_alive() for thread in self._threads):
            with contextlib.suppress(queue.Empty):  # unblock a fetch waiting to hand on
                self._queue.get(timeout=0.05)
        for thread in self._threads:
            thread.join()


class _Held:
    """Bytes fetched but not yet handed on, from file offset `start` to `end`."""

    def __init__(self) -> None:
        self.views: list[memoryview] = []
        self.start = self.end = 0

    def add(self, view: memoryview) -> None:
        self.views.append(view)
        self.end += len(view)

    def take(self, upto: int) -> list[memoryview]:
        """The held bytes before file offset `upto`, no longer held."""
        taken = []
        while self.views and self.start < upto:
            view = self.views[0]
            step = min(len(view), upto - self.start)
            taken.append(view[:step])
            if step == len(view):
                self.views.pop(0)
            else:
                self.views[0] = view[step:]
            self.start += step
        return taken
