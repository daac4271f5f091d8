"""A throwaway SeaweedFS S3 server for the S3 figures: the same launcher the tests use
(tests/s3_server.py: free loopback ports, enforced credentials), with its admin identity,
stopped and its data removed on exit."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.s3_server import SeaweedS3


@contextmanager
def s3_server(bucket: str) -> Iterator[SeaweedS3]:
    """A running server with `bucket` created."""
    with tempfile.TemporaryDirectory(prefix="bench-weed-") as tmp:
        server = SeaweedS3(Path(tmp), buckets=(bucket,))
        server.start()
        try:
            yield server
        finally:
            server.stop()
