"""A file that tensorizer writes while its parts are already uploading.

tensorizer writes every byte of a tensor's entry once: the data when it is encrypted,
the header (`pwrite` back in front of it) when its hashes are known, in any order
between tensors of a batch. Only three places are written again: the prologue (file
header and metadata block, rewritten after every batch and at close), and the 8-byte end
marker written at the end after each batch, which the next batch's first header
overwrites. `StreamedFile` spools each part of the file to its own file in the staging
directory and hands a part to the sink (an S3 multipart upload) as soon as every byte
of it has been written, unless it holds the prologue (sent last, when the file is
finished) or the latest end marker. A part inside a large tensor's data is thus sent
while the rest of that tensor is still being spooled. The staging directory holds at
most the prologue's part, the parts of one batch whose headers are pending, and
`in_flight` + 2 parts handed to the sink: batch + (in_flight + 4) x part, whatever the
size of the model or of its largest tensor (192 MiB with the defaults below).

It has no `fileno`, so tensorizer writes through its locked seek-and-write path.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from resources.errors import ModelpubError
from resources.storage import digests
from resources.storage.store import PartSink

END_MARKER = b"\0" * 8  # tensorizer's "no more tensors" field, rewritten per batch
IN_FLIGHT = 4  # parts uploading at once; two more may wait spooled
BATCH_BYTES = 64 << 20  # source tensors per write_state_dict when streaming: its headers
# are pending while it is written, so up to a batch of parts may wait for them
MIN_PART = 5 << 20  # S3's smallest part but the last
PART_SIZE = 16 << 20
MAX_PARTS = 9000  # S3 allows 10,000; room for a file larger than expected


def part_size_for(expected_bytes: int) -> int:
    """A part size (MiB multiple) for a file of about `expected_bytes` within MAX_PARTS."""
    mib = 1 << 20
    return max(PART_SIZE, -(-expected_bytes // MAX_PARTS // mib) * mib)


class StreamLayoutError(ModelpubError):
    """The writer changed bytes of a part already uploaded."""


class StreamedFile(io.RawIOBase):
    def __init__(
        self, sink: PartSink, key: str, staging: Path, part_size: int, in_flight: int = IN_FLIGHT
    ):
        super().__init__()
        self.key = key  # the store key it becomes
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes")
        self.sink, self.part_size = sink, part_size
        self.staging = staging
        staging.mkdir(parents=True, exist_ok=True)
        # a directory of its own: two streams never share spool file names
        self._spool = Path(tempfile.mkdtemp(dir=staging, prefix=".parts-"))
        self._pos = 0
        self.size = 0  # the furthest byte written
        self._spooled: dict[int, Path] = {}  # part index -> its spool file
        self._part_bytes: dict[int, int] = {}  # part index -> bytes its spool file holds
        self._covered: dict[int, list[list[int]]] = {}  # part index -> written ranges
        self._prologue_end = 1  # bytes from 0 that are rewritten until the file is done
        self._marker: int | None = None  # where the latest end marker lies
        self._lock = threading.Lock()
        self.spooled_bytes = 0
        self._sent: set[int] = set()
        self.parts_sha256: dict[int, str] = {}  # part index -> sha256 hex, once uploaded
        self._pending: list[Future] = []
        self._room = threading.Semaphore(in_flight + 2)
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="modelpub-part")
        self.peak_spooled = 0  # bytes, the most the staging directory held at once
        self._done = False

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
                raise StreamLayoutError(
                    f"tensorizer rewrote byte {offset + written} after its part was uploaded; "
                    "this tensorizer version writes in an order streaming cannot follow"
                )
            chunk = view[written : written + self.part_size - within]
            path = self._spooled.setdefault(index, self._spool / f"part-{index + 1:05d}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, chunk, within)
            finally:
                os.close(fd)
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
        """tensorizer closes the file when it is done; `finish` completes the upload."""

    # --- what the publisher calls ------------------------------------------------------

    def prologue_written(self) -> None:
        """Called once tensorizer's serializer is open: what it has written so far (file
        header, metadata block) is rewritten until the end, so its parts go last."""
        self._prologue_end = max(self.size, 1)

    def finish(self) -> digests.Entry:
        """Send the remaining parts (the header's last) and complete the upload; returns
        the file's record entry: its size and each part's sha256."""
        last = (self.size - 1) // self.part_size
        for index in sorted(self._spooled, reverse=True):  # the prologue's part(s) last
            self._send(index)
        self._wait()
        missing = sorted(set(range(last + 1)) - self._sent)
        if missing:
            raise StreamLayoutError(f"parts {missing} of the file were never written")
        self.sink.complete(last + 1)
        self._done = True
        self._pool.shutdown()
        self._spool.rmdir()
        ordered = [self.parts_sha256[i] for i in range(last + 1)]
        return digests.parts(self.size, self.part_size, ordered)

    def abort(self) -> None:
        """Give up: stop the uploads, remove the spool files, abort the upload."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for path in self._spooled.values():
            path.unlink(missing_ok=True)
        shutil.rmtree(self._spool, ignore_errors=True)
        if not self._done:
            self.sink.abort()

    # --- parts -------------------------------------------------------------------------

    def _grew(self, index: int, end: int) -> None:
        with self._lock:
            growth = end - self._part_bytes.get(index, 0)
            if growth > 0:
                self._part_bytes[index] = end
                self.spooled_bytes += growth
                self.peak_spooled = max(self.peak_spooled, self.spooled_bytes)

    def _removed(self, index: int) -> None:
        with self._lock:
            self.spooled_bytes -= self._part_bytes.pop(index, 0)

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
        if index in self._sent:
            return
        self._raise_failed()
        path = self._spooled.pop(index, None)
        if path is None:
            return  # never written: finish reports it
        expected = min(self.part_size, self.size - index * self.part_size)
        if self._covered.get(index) != [[0, expected]]:
            raise StreamLayoutError(f"part {index + 1} has bytes never written when it is final")
        self._room.acquire()  # the writer waits while the uploads catch up
        self._sent.add(index)
        self._covered.pop(index, None)
        self._pending.append(self._pool.submit(self._upload, index, path))

    def _upload(self, index: int, path: Path) -> None:
        try:
            data = path.read_bytes()
            digest = hashlib.sha256(data).digest()
            self.sink.upload(index + 1, data, digest)
            self.parts_sha256[index] = digest.hex()
        finally:
            path.unlink(missing_ok=True)
            self._removed(index)
            self._room.release()

    def _raise_failed(self) -> None:
        for future in [f for f in self._pending if f.done()]:
            future.result()  # an upload's error, raised in the writer

    def _wait(self) -> None:
        for future in self._pending:
            future.result()
