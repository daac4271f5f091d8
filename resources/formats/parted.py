"""A file that tensorizer writes, sent on part by part as soon as no write can change a part.

tensorizer writes every byte of a tensor's entry once: the data when it is encrypted,
the header (`pwrite` back in front of it) when its hashes are known, in any order
between tensors of a batch. Only three places are written again: the prologue (file
header and metadata block, rewritten after every batch and at close), and the 8-byte end
marker written at the end after each batch, which the next batch's first header
overwrites. `PartedFile` holds each part of the file until every byte of it has been
written, unless it holds the prologue (sent last, when the file is finished) or the
latest end marker, then hashes it and sends it on, on a pool of `in_flight` threads. A
part inside a large tensor's data is thus sent while the rest of that tensor is still
being written. It holds at most the prologue's part, the parts of one batch whose
headers are pending (two more where the batch straddles parts), the latest end marker's,
and `in_flight` + 2 parts being sent: batch + (in_flight + 5) x part, whatever the size
of the model or of its largest tensor.

Where a part's bytes are held and where a final part goes are its subclasses' to say:
resources/formats/streaming.py `StreamedFile` (spool files, an S3 multipart upload) and
resources/formats/direct.py `DirectFile` (page-aligned memory, a local file written with
O_DIRECT).

It has no `fileno`, so tensorizer writes through its locked seek-and-write path.
"""

from __future__ import annotations

import hashlib
import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager

from resources.errors import ModelpubError
from resources.storage import digests

END_MARKER = b"\0" * 8  # tensorizer's "no more tensors" field, rewritten per batch


class PartLayoutError(ModelpubError):
    """The writer changed bytes of a part already sent on."""


class PartedFile(io.RawIOBase):
    def __init__(self, part_size: int, in_flight: int, name: str):
        super().__init__()
        self.part_size = part_size
        self._pos = 0
        self.size = 0  # the furthest byte written
        self._held: dict[int, int] = {}  # part index -> bytes held (the furthest written)
        self._covered: dict[int, list[list[int]]] = {}  # part index -> written ranges
        self._prologue_end = 1  # bytes from 0 that are rewritten until the file is done
        self._marker: int | None = None  # where the latest end marker lies
        self._lock = threading.Lock()
        self.held_bytes = 0
        self.peak_held = 0  # bytes, the most held at once
        self._sent: set[int] = set()
        self.parts_sha256: dict[int, str] = {}  # part index -> sha256 hex, once sent
        self._pending: list[Future] = []
        self._room = threading.Semaphore(in_flight + 2)
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix=f"modelpub-{name}")
        self._done = False

    # --- where parts are held and where they go: the subclass's -----------------------

    def _put(self, index: int, within: int, chunk: memoryview) -> None:
        """Hold `chunk` at byte `within` of the part (the writer's thread)."""
        raise NotImplementedError

    def _part(self, index: int, length: int) -> AbstractContextManager[bytes | memoryview]:
        """The part's `length` bytes, final (a pool thread)."""
        raise NotImplementedError

    def _ship(self, index: int, data: bytes | memoryview, sha256: bytes) -> None:
        """Send the final part on (a pool thread)."""
        raise NotImplementedError

    def _free(self, index: int) -> None:
        """The part is sent, or failed to be: let its bytes go (a pool thread)."""
        raise NotImplementedError

    def _complete(self, count: int) -> None:
        """Every part is sent: make the file whole."""
        raise NotImplementedError

    def _discard(self) -> None:
        """Give up: let every part go, undo what was sent (after the pool stopped)."""
        raise NotImplementedError

    # --- what tensorizer calls --------------------------------------------------------

    def readable(self) -> bool:
        return True  # tensorizer asks for a read-write file; it never reads

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        offset, written = self._pos, 0
        if len(view) == len(END_MARKER) and offset == self.size and view == END_MARKER:
            self._marker = offset
        elif self._marker is not None and offset <= self._marker < offset + len(view):
            self._marker = None  # overwritten by the next batch's first header
        while written < len(view):
            index, within = divmod(offset + written, self.part_size)
            if index in self._sent:
                raise PartLayoutError(
                    f"tensorizer rewrote byte {offset + written} after its part was sent; "
                    "this tensorizer version writes in an order parts cannot follow"
                )
            chunk = view[written : written + self.part_size - within]
            self._put(index, within, chunk)
            self._grew(index, within + len(chunk))
            self.size = max(self.size, offset + written + len(chunk))
            if self._cover(index, within, within + len(chunk)) and self._final(index):
                self._send(index)
            written += len(chunk)
        self._pos = offset + written
        return written

    def flush(self) -> None:
        self._raise_failed()

    def close(self) -> None:
        """tensorizer closes the file when it is done; `finish` completes it."""

    # --- what the publisher calls ------------------------------------------------------

    def prologue_written(self) -> None:
        """Called once tensorizer's serializer is open: what it has written so far (file
        header, metadata block) is rewritten until the end, so its parts go last."""
        self._prologue_end = max(self.size, 1)

    def finish(self) -> digests.Entry:
        """Send the remaining parts (the header's last) and complete the file; returns
        its record entry: its size and each part's sha256."""
        last = (self.size - 1) // self.part_size
        with self._lock:
            left = sorted(set(self._held) - self._sent, reverse=True)
        for index in left:  # the prologue's part(s) last
            self._send(index)
        self._wait()
        missing = sorted(set(range(last + 1)) - self._sent)
        if missing:
            raise PartLayoutError(f"parts {missing} of the file were never written")
        self._pool.shutdown()
        self._complete(last + 1)
        self._done = True
        ordered = [self.parts_sha256[i] for i in range(last + 1)]
        return digests.parts(self.size, self.part_size, ordered)

    def abort(self) -> None:
        """Give up: stop sending, let the parts go, undo what was sent."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._discard()

    # --- parts -------------------------------------------------------------------------

    def _grew(self, index: int, end: int) -> None:
        with self._lock:
            growth = end - self._held.get(index, 0)
            if growth > 0:
                self._held[index] = end
                self.held_bytes += growth
                self.peak_held = max(self.peak_held, self.held_bytes)

    def _cover(self, index: int, start: int, end: int) -> bool:
        """Record that bytes [start, end) of the part are written; whether all of it is."""
        ranges = [r for r in self._covered.setdefault(index, []) if r[1] < start or r[0] > end]
        for r in self._covered[index]:
            if not (r[1] < start or r[0] > end):
                start, end = min(start, r[0]), max(end, r[1])
        ranges.append([start, end])
        self._covered[index] = ranges
        return ranges == [[0, self.part_size]]

    def _final(self, index: int) -> bool:
        """No write can change the (whole) part any more."""
        first = index * self.part_size
        if first < self._prologue_end:
            return False
        return self._marker is None or not first <= self._marker < first + self.part_size

    def _send(self, index: int) -> None:
        if index in self._sent or index not in self._held:
            return  # sent, or never written: finish reports it
        self._raise_failed()
        expected = min(self.part_size, self.size - index * self.part_size)
        if self._covered.get(index) != [[0, expected]]:
            raise PartLayoutError(f"part {index + 1} has bytes never written when it is final")
        self._room.acquire()  # the writer waits while the sends catch up
        self._sent.add(index)
        self._covered.pop(index, None)
        self._pending.append(self._pool.submit(self._send_part, index, expected))

    def _send_part(self, index: int, length: int) -> None:
        try:
            with self._part(index, length) as data:
                digest = hashlib.sha256(data).digest()  # releases the GIL
                self._ship(index, data, digest)
            self.parts_sha256[index] = digest.hex()
        finally:
            self._free(index)
            with self._lock:
                self.held_bytes -= self._held.pop(index, 0)
            self._room.release()

    def _raise_failed(self) -> None:
        """A send's error, raised in the writer; sends done are no longer looked at (this
        runs on every write, and a large model has thousands of parts)."""
        pending = []
        for future in self._pending:
            if future.done():
                future.result()
            else:
                pending.append(future)
        self._pending = pending

    def _wait(self) -> None:
        for future in self._pending:
            future.result()
