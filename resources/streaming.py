"""A file that tensorizer writes while its parts are already uploading.

tensorizer writes a file front to back, but it also goes back: after every batch of
tensors it writes an 8-byte end marker at the end of what it has written (the
"synchronized" point: every write before it is final) and rewrites the file header at
offset 0. `StreamedFile` spools each part of the file to its own file in the staging
directory; at each end marker, every whole part behind it is final and is handed to
the sink (an S3 multipart upload) and its spool file removed. The first part, which holds
the header, goes last, when the file is finished. The staging directory thus holds at most
the header's part, the parts one batch of tensors spans, and `in_flight` + 2 parts handed
to the sink: max(batch, largest tensor) + (in_flight + 4) x part, about 192 MiB with
the defaults below for a model whose tensors are all smaller than a batch.

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
from typing import Protocol

from resources import digests
from resources.errors import ModelpubError

END_MARKER = b"\0" * 8  # tensorizer's "no more tensors" field, rewritten per batch
IN_FLIGHT = 4  # parts uploading at once; two more may wait spooled
BATCH_BYTES = 64 << 20  # source tensors per write_state_dict when streaming: one is spooled
MIN_PART = 5 << 20  # S3's smallest part but the last
PART_SIZE = 16 << 20
MAX_PARTS = 9000  # S3 allows 10,000; room for a file larger than expected


def part_size_for(expected_bytes: int) -> int:
    """A part size (MiB multiple) for a file of about `expected_bytes` within MAX_PARTS."""
    mib = 1 << 20
    return max(PART_SIZE, -(-expected_bytes // MAX_PARTS // mib) * mib)


class StreamLayoutError(ModelpubError):
    """The writer changed bytes of a part already uploaded."""


class PartSink(Protocol):
    """Where the parts go: `upload(number, data, sha256)` for parts numbered from 1 (with
    their digest), in any order and from several threads; `complete(count)` once all are
    up; `abort()` on failure."""

    def upload(self, number: int, data: bytes, sha256: bytes) -> None: ...

    def complete(self, count: int) -> None: ...

    def abort(self) -> None: ...


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
        marker = len(view) == len(END_MARKER) and self._pos == self.size and view == END_MARKER
        offset, written = self._pos, 0
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
            written += len(chunk)
        self._pos = offset + written
        self.size = max(self.size, self._pos)
        if marker:  # everything before it is final
            self._send_whole_parts(below=offset)
        return written

    def flush(self) -> None:
        self._raise_failed()

    def close(self) -> None:
        """tensorizer closes the file when it is done; `finish` completes the upload."""

    # --- what the publisher calls ------------------------------------------------------

    def finish(self) -> digests.Entry:
        """Send the remaining parts (the header's last) and complete the upload; returns
        the file's record entry: its size and each part's sha256."""
        last = (self.size - 1) // self.part_size
        self._send_whole_parts(below=last * self.part_size)
        self._send(last)
        if last != 0:
            self._send(0)
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

    def _send_whole_parts(self, below: int) -> None:
        for index in sorted(self._spooled):
            if index != 0 and (index + 1) * self.part_size <= below:
                self._send(index)

    def _send(self, index: int) -> None:
        if index in self._sent:
            return
        self._raise_failed()
        path = self._spooled.pop(index, None)
        if path is None:
            return  # never written: finish reports it
        expected = min(self.part_size, self.size - index * self.part_size)
        if self._part_bytes.get(index) != expected:
            raise StreamLayoutError(f"part {index + 1} is incomplete when it is final")
        self._room.acquire()  # the writer waits while the uploads catch up
        self._sent.add(index)
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
