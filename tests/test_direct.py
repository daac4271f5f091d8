"""The local publish's writer: parts held in memory, hashed there, written with O_DIRECT
(or plain pwrite where refused), and the file is the one tensorizer writes to a path."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
import torch

from resources.formats import direct, tensorize
from resources.formats.direct import ALIGN, DirectFile
from resources.storage import digests

PART = 16 * ALIGN  # 64 KiB: a small model of many parts, aligned as O_DIRECT needs
KEY = bytes(range(32))


def _batches(tail: int = 1000, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """About 1 MiB in 6 batches (many parts, many end markers), the last tensor `tail`
    bytes long."""
    generator = torch.Generator().manual_seed(seed)
    batches = [
        {f"layer{b}.w{i}": torch.randn(64, 320 + b, generator=generator) for i in range(3)}
        for b in range(6)
    ]
    batches[-1]["tail"] = torch.randint(0, 256, (tail,), dtype=torch.uint8, generator=generator)
    return batches


def _plain(batches: list[dict[str, torch.Tensor]], dest, key: bytes | None) -> None:
    """What tensorizer writes itself, to a path."""
    from tensorizer import EncryptionParams, TensorSerializer

    serializer = TensorSerializer(dest, encryption=EncryptionParams(key) if key else None)
    for batch in batches:
        serializer.write_state_dict({n: t.clone() for n, t in batch.items()})
    serializer.close()


def _exact_tail(scratch: Path, key: bytes | None) -> int:
    """A tail for which the file is a whole number of parts."""
    tail = 1000
    for _ in range(4):  # the tail's bytes move the end byte for byte
        _plain(_batches(tail), str(scratch), key)
        size = scratch.stat().st_size
        if size % PART == 0:
            return tail
        tail += -size % PART
    raise AssertionError("no tail makes the file a whole number of parts")


def _written(dest: Path, batches, key: bytes | None, use_direct: bool, **kwargs):
    target = DirectFile(dest, PART, direct=use_direct, **kwargs)
    tensorize.serialize(batches, target, key, consume=True)
    return target, target.finish()


@pytest.mark.parametrize("use_direct", [True, False], ids=["o_direct", "pwrite"])
@pytest.mark.parametrize("key", [KEY, None], ids=["encrypted", "plain"])
@pytest.mark.parametrize("exact", [True, False], ids=["whole-parts", "short-last-part"])
def test_the_file_is_the_one_tensorizer_writes_to_a_path(tmp_path, use_direct, key, exact):
    tail = _exact_tail(tmp_path / "sized.tensors", key) if exact else 1000
    reference, dest = tmp_path / "plain.tensors", tmp_path / "model.tensors"
    _plain(_batches(tail), str(reference), key)
    target, entry = _written(dest, _batches(tail), key, use_direct)
    assert target.direct is use_direct
    size = dest.stat().st_size
    assert size == reference.stat().st_size == entry["size"]
    assert (size % PART == 0) is exact
    if key is None:  # encryption draws fresh nonces: the same tensors, other bytes
        assert dest.read_bytes() == reference.read_bytes()
    recomputed = digests.recompute({"part_size": PART}, digests.file_chunks(dest))
    assert entry == recomputed and len(entry["parts_sha256"]) == -(-size // PART) > 10
    back = tensorize.deserialize(str(dest), key)
    expected = {n: t for batch in _batches(tail) for n, t in batch.items()}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[n], expected[n]) for n in expected)


def test_a_local_publish_writes_with_o_direct_and_returns_the_entry(tmp_path, monkeypatch):
    real_open, real_pwrite, direct_fds, direct_bytes = os.open, os.pwrite, set(), []

    def opening(path, flags, *args):
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def pwrite(fd, data, offset):
        written = real_pwrite(fd, data, offset)
        if fd in direct_fds:
            direct_bytes.append(written)
        return written

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "pwrite", pwrite)
    dest = tmp_path / "model.tensors"
    stats = tensorize.serialize(_batches(), dest, KEY, consume=True, part_size=PART)
    # every part went through the O_DIRECT descriptor, the last one padded to a block
    assert len(direct_bytes) == len(stats.entry["parts_sha256"])
    assert sum(direct_bytes) >= stats.bytes_written
    assert stats.entry == digests.recompute({"part_size": PART}, digests.file_chunks(dest))
    assert stats.bytes_written == dest.stat().st_size


def test_a_filesystem_that_refuses_o_direct_is_written_with_pwrite(tmp_path, monkeypatch):
    """As tmpfs did before Linux 6.6: opening with O_DIRECT fails with EINVAL."""
    real = os.open

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    target, entry = _written(tmp_path / "model.tensors", _batches(), KEY, use_direct=True)
    assert not target.direct
    assert entry == digests.recompute(
        {"part_size": PART}, digests.file_chunks(tmp_path / "model.tensors")
    )


def test_o_direct_writes_refused_after_open_go_through_pwrite(tmp_path, monkeypatch):
    real, refused = os.pwrite, []

    def pwrite(fd, data, offset):
        if fd == getattr(target, "_direct_fd", None):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    target = None
    monkeypatch.setattr(os, "pwrite", pwrite)
    dest = tmp_path / "model.tensors"
    target = DirectFile(dest, PART)
    assert target.direct
    tensorize.serialize(_batches(), target, KEY, consume=True)
    entry = target.finish()
    assert refused and not target.direct
    assert entry == digests.recompute({"part_size": PART}, digests.file_chunks(dest))
    assert all(
        torch.equal(t, _batches()[-1][n])
        for n, t in tensorize.deserialize(str(dest), KEY).items()
        if n in _batches()[-1]
    )


def test_buffers_are_reused_and_bounded(tmp_path):
    """What it holds does not grow with the file: a batch + (in_flight + 5) parts."""
    batches = [dict(b) for _ in range(4) for b in _batches()]  # 24 batches, ~4 MiB
    batches = [{f"{i}.{n}": t for n, t in b.items()} for i, b in enumerate(batches)]
    target, entry = _written(tmp_path / "model.tensors", batches, None, use_direct=True)
    batch = max(sum(t.nbytes for t in b.values()) for b in _batches())
    bound = batch + (direct.IN_FLIGHT + 5) * PART
    assert target.peak_held <= bound
    assert target.buffers * PART <= bound + PART  # a buffer's part may be held in part
    assert target.buffers < len(entry["parts_sha256"]) // 3


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("modelpub-")}


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_an_error_inside_tensorizer_leaves_no_file_handle_or_thread(tmp_path, monkeypatch):
    serializer, calls = tensorize._serializer_class(), []
    original = serializer._write_tensor

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 10:  # in the fourth batch, parts already written
            raise RuntimeError("tensorizer failed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(serializer, "_write_tensor", failing)
    dest, fds = tmp_path / "model.tensors", _open_fds()
    with pytest.raises(RuntimeError, match="tensorizer failed"):
        tensorize.serialize(iter(_batches()), dest, KEY, consume=True, part_size=PART)
    assert not dest.exists()
    assert _open_fds() <= fds and not _threads()


def test_a_failed_write_leaves_no_file_handle_or_thread(tmp_path, monkeypatch):
    real, fds = os.pwrite, _open_fds()

    def pwrite(fd, data, offset):
        if offset >= 4 * PART:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    dest = tmp_path / "model.tensors"
    with pytest.raises(OSError, match="No space left"):
        tensorize.serialize(_batches(), dest, KEY, consume=True, part_size=PART)
    assert not dest.exists()
    assert _open_fds() <= fds and not _threads()
