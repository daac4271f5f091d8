"""Where the S3 publish step's and the tensor check's time goes: each stage alone on the
same kind of bytes, in CPU seconds per GB, and how busy the cores were while the whole
step ran, beside boto3 moving the same bytes.

The S3 server (SeaweedFS) runs on the same cores, so a step that keeps every core busy
can go no faster than (its CPU + the server's CPU) / cores: boto3 only reads and sends
the bytes, the pipeline also reads the source, hashes and encrypts it, spools each part
and hashes it again. The stage figures say what each of those costs.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.figures import Figure
from resources.formats import tensorize
from resources.formats.streaming import IN_FLIGHT, PART_SIZE

SAMPLE_TENSORS = 16  # of 16 MiB: a 256 MiB sample for the stages measured alone
SAMPLE_ELEMENTS = 8 << 20  # float16


@dataclass
class Usage:
    """Wall seconds and CPU seconds (this process, the S3 server) of one measured run."""

    wall: float
    client: float
    server: float = 0.0

    @property
    def cpu(self) -> float:
        return self.client + self.server

    @property
    def cores_busy(self) -> float:
        return self.cpu / self.wall


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def metered(server_pid: int | None = None) -> Iterator[list[Usage]]:
    """Measure the block: yields a list that holds its `Usage` once it is done."""
    out: list[Usage] = []
    server = process_cpu(server_pid) if server_pid else 0.0
    client, start = time.process_time(), time.perf_counter()
    yield out
    wall, client = time.perf_counter() - start, time.process_time() - client
    out.append(Usage(wall, client, process_cpu(server_pid) - server if server_pid else 0.0))


def measure(run: Callable[[], object], server_pid: int | None = None) -> Usage:
    with metered(server_pid) as usage:
        run()
    return usage[0]


class NullFile(io.RawIOBase):
    """A seekable file that keeps nothing: tensorizer's own work, without any I/O."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = self.size = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.pos += n
        self.size = max(self.size, self.pos)
        return n


def _sample(model_bytes: int) -> dict[str, torch.Tensor]:
    """Up to SAMPLE_TENSORS float16 tensors of 16 MiB, no more than the model holds."""
    generator = torch.Generator().manual_seed(0)
    count = max(1, min(SAMPLE_TENSORS, model_bytes // (2 * SAMPLE_ELEMENTS)))
    return {f"w{i}": torch.randn(SAMPLE_ELEMENTS, generator=generator).half() for i in range(count)}


def _spool(parts: list[bytes], staging: Path) -> None:
    """What StreamedFile does with each part: write it to a spool file, read it back."""
    for i, part in enumerate(parts):
        path = staging / f"part-{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, part, 0)
        finally:
            os.close(fd)
        path.read_bytes()
        path.unlink()


def _sha256(parts: list[bytes]) -> list[bytes]:
    return [hashlib.sha256(part).digest() for part in parts]


def _upload(store, parts: list[bytes], sha256: list[bytes]) -> None:
    """The parts through the pipeline's multipart sink (4 in flight, checksummed)."""
    from concurrent.futures import ThreadPoolExecutor

    from resources.storage.s3 import _Multipart

    upload = _Multipart(store, "stages/sample")
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(upload.upload, range(1, len(parts) + 1), parts, sha256))
    upload.complete(len(parts))


def stage_figures(
    model: str,
    snapshot: Path,
    work: Path,
    key: bytes,
    store,
    server_pid: int,
    step: Usage,
    gb: float,
) -> list[Figure]:
    """CPU s/GB of each stage alone, as a share of the whole publish step's CPU (this
    process and the server) per GB."""
    per_gb = step.cpu / gb
    sample = _sample(int(gb * 1e9))
    sample_gb = sum(t.nbytes for t in sample.values()) / 1e9
    data = b"".join(t.numpy().tobytes() for t in sample.values())
    parts = [data[i : i + PART_SIZE] for i in range(0, len(data), PART_SIZE)]
    del data
    source_gb = sum(p.stat().st_size for p in snapshot.glob("*.safetensors")) / 1e9
    staging = work / "stages-spool"
    staging.mkdir(exist_ok=True)
    bf16 = {n: t.to(torch.bfloat16) for n, t in sample.items()}
    sha256 = _sha256(parts)
    runs: dict[str, tuple[Usage, float]] = {
        "read the source (safetensors, page cache)": (
            measure(lambda: [None for _ in tensorize.SourceCheckpoint(snapshot, None).batches()]),
            source_gb,
        ),
        "cast float16 → bfloat16 (only when the dtype changes)": (
            measure(lambda: [t.to(torch.float16) for t in bf16.values()]),
            sample_gb,
        ),
        "tensorizer: sha256 + encrypt, to a null file": (
            # consumed, as the publish does: the tensors stay encrypted, no decrypt pass
            measure(lambda: tensorize.serialize(sample, NullFile(), key, consume=True)),
            sample_gb,
        ),
        "sha256, one pass (tensorizer's, then each part's)": (
            measure(lambda: _sha256(parts)),
            sample_gb,
        ),
        "spool: write each part to staging, read it back": (
            measure(lambda: _spool(parts, staging)),
            sample_gb,
        ),
        "upload the parts: this process": (
            measure(lambda: _upload(store, parts, sha256), server_pid),
            sample_gb,
        ),
    }
    upload, _ = runs["upload the parts: this process"]
    runs["upload the parts: the S3 server"] = (Usage(upload.wall, upload.server), sample_gb)
    upload.server = 0.0
    baseline = "publish step → S3: CPU of this process + the server"
    figures = [
        Figure(
            "breakdown",
            model,
            name,
            usage.cpu / stage_gb,
            "CPU s/GB",
            baseline,
            per_gb,
            higher_is_better=False,
        )
        for name, (usage, stage_gb) in runs.items()
    ]
    return figures


def busy(model: str, name: str, usage: Usage, note: str = "") -> Figure:
    """How many cores a run kept busy (this process and the S3 server together)."""
    return Figure(
        "breakdown",
        model,
        f"{name}: cores busy (this process {usage.client / usage.wall:.2f}, "
        f"server {usage.server / usage.wall:.2f})",
        usage.cores_busy,
        "cores",
        "cores on the machine",
        float(os.cpu_count() or 1),
        higher_is_better=True,
        note=note,
    )
