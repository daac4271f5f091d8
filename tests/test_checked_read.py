"""A stored file read once for tensorizer and for its checks (resources/formats/checked_read.py)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from resources.formats import tensorize
from resources.formats.checked_read import CheckedRead
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


def _chunks(data: bytes, size: int = 300_000):
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_tensorizer_reads_through_it_and_the_digests_cover_the_whole_file(tmp_path):
    weights, data = _file(tmp_path)
    entry = digests.recompute({"part_size": PART}, [data])
    stream = CheckedRead(_chunks(data), entry)
    back = dict(tensorize.iter_deserialized(stream, None))
    digester = stream.finish()
    assert all(torch.equal(back[n], weights[n]) for n in weights)
    assert digester.matches(entry)
    assert digester.sha256 == hashlib.sha256(data).hexdigest()  # what the signature names


def test_a_reader_that_stops_early_still_gets_the_digest_of_everything(tmp_path):
    _, data = _file(tmp_path)
    entry = digests.whole(len(data), hashlib.sha256(data).hexdigest())
    stream = CheckedRead(_chunks(data), entry)
    stream.read(1000)
    assert stream.finish().matches(entry)
    changed = bytearray(data)
    changed[-5] ^= 1
    assert not CheckedRead(_chunks(bytes(changed)), entry).finish().matches(entry)


def test_a_store_error_reaches_the_reader_and_the_checker(tmp_path):
    _, data = _file(tmp_path)

    def failing():
        yield data[:1000]
        raise StoreError("the endpoint went away")

    stream = CheckedRead(failing(), {"size": len(data), "sha256": ""})
    assert len(stream.read(1000)) == 1000
    with pytest.raises(StoreError, match="went away"):
        stream.read(10)
    with pytest.raises(StoreError, match="went away"):
        stream.finish()


def test_it_only_goes_forward(tmp_path):
    _, data = _file(tmp_path)
    stream = CheckedRead(_chunks(data, 1000), {"size": len(data), "sha256": ""})
    stream.seek(2500)
    assert stream.read(10) == data[2500:2510]
    stream.seek(2100)  # back within the chunk at hand
    assert stream.read(10) == data[2100:2110]
    with pytest.raises(OSError, match="only goes forward"):
        stream.seek(10)
    stream.finish()
