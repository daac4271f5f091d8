"""A stored file read once for tensorizer and for its checks (resources/formats/checked_read.py)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import tracemalloc

import pytest
import torch

from resources.formats import tensorize
from resources.formats.checked_read import DEPTH, ChangedInStore, CheckedRead
from resources.storage import digests
from resources.storage.store import StoreError

PART = 1 << 20


def _file(tmp_path):
    weights = {
        f"w{i}": torch.randn(300, 1000, generator=torch.Generator().manual_seed(i))
        for i in range(4)
    }
    path = tmp_path / "model.tensors"
    tensorize.serialize(weights, path, None)
    return weights, path.read_bytes()


class _Stored(io.RawIOBase):
    """A stored file as a store's `open_read` gives it: at most `step` bytes a read (a
    network stream's pieces), failing once `fail_after` bytes were read, if given."""

    def __init__(self, data: bytes, step: int = 300_000, fail_after: int | None = None):
        super().__init__()
        self.data, self.step, self.fail_after, self.done = data, step, fail_after, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.fail_after is not None and self.done >= self.fail_after:
            raise StoreError("the endpoint went away")
        step = min(len(buffer), self.step, len(self.data) - self.done)
        buffer[:step] = self.data[self.done : self.done + step]
        self.done += step
        return step


def test_tensorizer_reads_through_it_and_the_digests_cover_the_whole_file(tmp_path):
    weights, data = _file(tmp_path)
    entry = digests.recompute({"part_size": PART}, [data])
    stream = CheckedRead(_Stored(data), entry)
    back = dict(tensorize.iter_deserialized(stream, None))
    digester = stream.finish()
    assert all(torch.equal(back[n], weights[n]) for n in weights)
    assert digester.matches(entry)
    assert digester.sha256 == hashlib.sha256(data).hexdigest()  # what the signature names


def test_a_reader_that_stops_early_still_gets_the_digest_of_everything(tmp_path):
    _, data = _file(tmp_path)
    entry = digests.whole(len(data), hashlib.sha256(data).hexdigest())
    stream = CheckedRead(_Stored(data), entry)
    stream.read(1000)
    assert stream.finish().matches(entry)
    changed = bytearray(data)
    changed[-5] ^= 1
    assert not CheckedRead(_Stored(bytes(changed)), entry).finish().matches(entry)


def test_a_store_error_reaches_the_reader_after_what_was_checked_before_it(tmp_path):
    _, data = _file(tmp_path)
    entry = digests.recompute({"part_size": PART}, [data])
    stream = CheckedRead(_Stored(data, fail_after=PART + 1000), entry)
    with pytest.raises(StoreError, match="went away"):
        _read_all(stream)
    assert stream.read_so_far == data[:PART]
    with pytest.raises(StoreError, match="went away"):
        stream.finish()


def test_it_only_goes_forward(tmp_path):
    _, data = _file(tmp_path)
    stream = CheckedRead(_Stored(data), digests.recompute({"part_size": PART}, [data]))
    stream.seek(2500)
    assert stream.read(10) == data[2500:2510]
    stream.seek(2100)  # back within the part at hand
    assert stream.read(10) == data[2100:2110]
    stream.seek(PART + 100)
    assert stream.read(10) == data[PART + 100 : PART + 110]
    with pytest.raises(OSError, match="only goes forward"):
        stream.seek(10)
    stream.finish()


def test_a_stopped_read_fetches_no_further_and_closes_the_store_s_stream():
    """A reader that fails on checked bytes (a wrong key, at the first tensor) stops the
    read there: the rest of the file is not fetched for nothing, no thread is left."""
    data = os.urandom(64 * PART + 123)
    entry = digests.recompute({"part_size": PART}, [data])
    threads = threading.active_count()
    stored = _Stored(data)
    stream = CheckedRead(stored, entry)
    assert stream.read(1000) == data[:1000]
    stream.stop()
    assert stored.closed
    assert stored.done <= (2 * DEPTH + 3) * PART < len(data)  # what its buffers hold
    assert threading.active_count() == threads
    assert not stream.changed


def test_it_holds_a_few_parts_in_memory_whatever_the_file_s_size():
    """Each part is read into a buffer that is filled again once the reader is past it
    and the whole-file hasher done with it: memory for a few parts, not the file."""
    data = os.urandom(64 * PART)
    entry = digests.recompute({"part_size": PART}, [data])
    tracemalloc.start()
    try:
        stream = CheckedRead(_Stored(data, step=PART), entry)
        into, got = bytearray(100_000), hashlib.sha256()
        while read := stream.readinto(into):
            got.update(into[:read])
        digester = stream.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.hexdigest() == digester.sha256 == hashlib.sha256(data).hexdigest()
    assert digester.matches(entry)
    assert peak < (2 * DEPTH + 4) * PART < len(data)


def _changed(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 1
    return bytes(changed)


def _read_all(stream: CheckedRead) -> bytes:
    """Every byte the reader gets, also kept in `stream.read_so_far` where it fails."""
    stream.read_so_far = b""
    while chunk := stream.read(100_000):
        stream.read_so_far += chunk
    return stream.read_so_far


def _readable(stream: CheckedRead) -> bytes:
    """What the reader gets before the stream refuses to go on."""
    with pytest.raises(ChangedInStore):
        _read_all(stream)
    return stream.read_so_far


def test_a_changed_part_reaches_the_reader_not_at_all(tmp_path):
    """The reader gets every byte before the changed part, then an error: none of the
    changed part's bytes, and no bytes after them."""
    _, data = _file(tmp_path)
    entry = digests.recompute({"part_size": PART}, [data])
    stream = CheckedRead(_Stored(_changed(data, PART + 10)), entry)
    assert _readable(stream) == data[:PART]
    assert stream.changed
    digester = stream.finish()
    assert not digester.matches(entry)
    assert digester.sha256 == hashlib.sha256(_changed(data, PART + 10)).hexdigest()


def test_a_changed_header_part_gives_tensorizer_nothing_to_parse(tmp_path):
    _, data = _file(tmp_path)
    entry = digests.recompute({"part_size": PART}, [data])
    assert _readable(CheckedRead(_Stored(_changed(data, 100)), entry)) == b""
    with pytest.raises(ChangedInStore, match="part 0"):
        dict(tensorize.iter_deserialized(CheckedRead(_Stored(_changed(data, 100)), entry), None))


@pytest.mark.parametrize("cut", [-1, 1])
def test_a_file_cut_short_or_grown_is_refused_before_its_last_part(tmp_path, cut):
    _, data = _file(tmp_path)
    entry = digests.recompute({"part_size": PART}, [data])
    changed = data[:cut] if cut < 0 else data + b"\0"
    stream = CheckedRead(_Stored(changed), entry)
    assert _readable(stream) == data[: len(data) // PART * PART]
    assert stream.changed


def test_parts_checked_first_leave_tensorizer_s_own_hashes_unchecked(tmp_path, monkeypatch):
    """Bytes checked against the record before tensorizer reads them are what was
    published: its per-tensor sha256 (a second pass) is skipped; a whole-file digest,
    known only at the end, still has tensorizer check each tensor."""
    from tensorizer import TensorDeserializer

    seen = []
    init = TensorDeserializer.__init__

    def recording(self, *args, verify_hash=None, **kwargs):
        seen.append(verify_hash)
        init(self, *args, verify_hash=verify_hash, **kwargs)

    monkeypatch.setattr(TensorDeserializer, "__init__", recording)
    weights, data = _file(tmp_path)
    for entry in (
        digests.recompute({"part_size": PART}, [data]),
        digests.whole(len(data), hashlib.sha256(data).hexdigest()),
    ):
        back = dict(tensorize.iter_deserialized(CheckedRead(_Stored(data), entry), None))
        assert all(torch.equal(back[n], weights[n]) for n in weights)
    assert seen == [False, True]
