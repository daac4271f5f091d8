"""A file that tensorizer writes while its parts are already uploading.

`StreamedFile` is a resources/formats/parted.py `PartedFile` (read its docstring for
tensorizer's write order and which parts are final) that spools each part of the file
to its own file in the staging directory and hands a final part to the sink (an S3
multipart upload). The staging directory holds at most what `PartedFile` counts,
batch + (in_flight + 5) x part, whatever the size of the model or of its largest tensor
(208 MiB with the defaults below).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

from resources.formats.parted import PartedFile
from resources.storage.store import PartSink

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


class StreamedFile(PartedFile):
    def __init__(
        self, sink: PartSink, key: str, staging: Path, part_size: int, in_flight: int = IN_FLIGHT
    ):
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes")
        super().__init__(part_size, in_flight, "part")
        self.key = key  # the store key it becomes
        self.sink = sink
        self.staging = staging
        staging.mkdir(parents=True, exist_ok=True)
        # a directory of its own: two streams never share spool file names
        self._spool = Path(tempfile.mkdtemp(dir=staging, prefix=".parts-"))

    def _spooled(self, index: int) -> Path:
        return self._spool / f"part-{index + 1:05d}"

    def _put(self, index: int, within: int, chunk: memoryview) -> None:
        fd = os.open(self._spooled(index), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, chunk, within)
        finally:
            os.close(fd)

    def _part(self, index: int, length: int) -> nullcontext[bytes]:
        return nullcontext(self._spooled(index).read_bytes())

    def _ship(self, index: int, data: bytes | memoryview, sha256: bytes) -> None:
        self.sink.upload(index + 1, data, sha256)

    def _free(self, index: int) -> None:
        self._spooled(index).unlink(missing_ok=True)

    def _complete(self, count: int) -> None:
        self.sink.complete(count)
        self._done = True  # the upload stands, whatever happens to the spool
        self._spool.rmdir()

    def _discard(self) -> None:
        """Remove the spool files, abort the upload."""
        shutil.rmtree(self._spool, ignore_errors=True)
        if not self._done:
            self.sink.abort()
