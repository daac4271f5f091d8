"""The publish step's fast path keeps its promises: streamed batches, tensors given up
to the serializer, and a staged file moved (not copied) into the store, all produce
exactly the artifact the plain path would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resources.formats import tensorize
from resources.formats.artifact import check_files, write_artifact
from resources.layout import TENSORS_FILE
from resources.storage import digests
from resources.storage.store import LocalStore
from tests.real_parts import require


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    """Two safetensors shards in float32, plus a config file."""
    snap = tmp_path / "snapshot"
    snap.mkdir()
    gen = torch.Generator().manual_seed(0)
    save_file(
        {f"l{i}.w": torch.randn(64, 64, generator=gen) for i in range(6)}, snap / "a.safetensors"
    )
    save_file(
        {"emb": torch.randn(100, 64, generator=gen), "ids": torch.arange(10)},
        snap / "b.safetensors",
    )
    (snap / "config.json").write_text('{"model_type": "llama"}')
    return snap


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_batches_cover_the_checkpoint_in_order_within_the_size(snapshot: Path):
    whole = tensorize.load_source_weights(snapshot, "float16")
    batches = list(tensorize.iter_source_weights(snapshot, "float16", batch_bytes=20_000))
    assert len(batches) > 2
    assert all(sum(t.nbytes for t in b.values()) < 20_000 + 64 * 64 * 2 for b in batches)
    assert_same({k: v for b in batches for k, v in b.items()}, whole)
    assert whole["ids"].dtype == torch.int64  # only floating point tensors are cast


def test_source_tensors_read_as_safetensors_reads_them(tmp_path: Path):
    """Read straight into each tensor's memory (or through safetensors for a dtype it
    does not read itself): the same names, dtypes, shapes and bytes."""
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(2)
    tensors = {
        "b.bf16": torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        "a.mask": torch.rand(7, generator=gen) > 0.5,
        "c.scalar": torch.tensor(3, dtype=torch.int32),
        "d.empty": torch.empty(0, 4),
        "e.fp8": torch.randn(8, generator=gen).to(torch.float8_e4m3fn),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    expected = load_file(tmp_path / "model.safetensors")
    got = tensorize.load_source_weights(tmp_path, None)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(
            got[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


@pytest.mark.parametrize("key", [None, bytes(range(32))], ids=["plain", "encrypted"])
def test_consumed_batches_serialize_to_the_same_tensors(snapshot: Path, tmp_path: Path, key):
    expected = tensorize.load_source_weights(snapshot, "float16")
    batches = list(tensorize.iter_source_weights(snapshot, "float16", batch_bytes=20_000))
    dest = tmp_path / "model.tensors"
    tensorize.serialize(iter(batches), dest, key, consume=True)
    assert all(not b for b in batches)  # given up: emptied once written
    assert_same(tensorize.deserialize(str(dest), key), expected)


def test_recycled_batches_reuse_memory_only_once_the_batch_before_is_done(snapshot: Path):
    """A batch, read one ahead of its consumer, never shares memory with the batch before
    it (the one being written meanwhile), keeps the checkpoint's values until the consumer
    garbles them as encryption does, and memory is reused after that."""
    expected = tensorize.load_source_weights(snapshot, None)
    checkpoint = tensorize.SourceCheckpoint(snapshot, None)
    seen, pointers, before = [], set(), set()
    for batch in tensorize._prefetched(checkpoint.batches(20_000, recycle=True)):
        assert_same(batch, {name: expected[name] for name in batch})
        seen += batch
        these = {tensor.untyped_storage().data_ptr() for tensor in batch.values()}
        assert not these & before  # the batch before may still be in use
        pointers |= these
        before = these
        for tensor in batch.values():
            tensor.reshape(-1).view(torch.uint8).fill_(0xFF)  # what encryption leaves
    assert seen == list(expected)
    assert len(pointers) < len(expected)


def test_a_local_file_is_hashed_part_by_part_as_its_batches_are_written(
    snapshot: Path, tmp_path: Path
):
    """Parts are hashed while later batches are still being written: each digest must
    be of the part's final bytes (tensorizer rewrites the prologue and end marker)."""
    batches = tensorize.iter_source_weights(snapshot, "float16", batch_bytes=20_000)
    dest = tmp_path / "model.tensors"
    stats = tensorize.serialize(batches, dest, bytes(range(32)), consume=True, part_size=4096)
    assert stats.entry["size"] == dest.stat().st_size
    assert len(stats.entry["parts_sha256"]) == -(-dest.stat().st_size // 4096) > 2
    assert digests.file_matches(dest, stats.entry)


def test_without_consume_the_callers_tensors_are_left_intact(snapshot: Path, tmp_path: Path):
    weights = tensorize.load_source_weights(snapshot, "float16")
    before = {k: v.clone() for k, v in weights.items()}
    tensorize.serialize(weights, tmp_path / "model.tensors", bytes(32))
    assert_same(weights, before)


def test_tensors_sharing_memory_survive_in_place_encryption(tmp_path: Path):
    """Views of one buffer must not garble each other even when given up."""
    base = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
    batch = {"a": base[:2], "b": base[2:], "c": base}
    expected = {k: v.clone() for k, v in batch.items()}
    key = bytes(range(32))
    tensorize.serialize([batch], tmp_path / "model.tensors", key, consume=True)
    assert_same(tensorize.deserialize(str(tmp_path / "model.tensors"), key), expected)


def test_write_artifact_moves_the_tensors_into_the_store(snapshot: Path, tmp_path: Path):
    store, staging = LocalStore(tmp_path / "store"), tmp_path / "staging"
    staging.mkdir()
    key = bytes(range(32))
    written = write_artifact(store, "m/v1", snapshot, "float16", key, staging)
    assert not any(staging.iterdir())
    stored = store.path(f"m/v1/{TENSORS_FILE}")
    assert stored.stat().st_mode & 0o777 == 0o644
    entry = written.files[TENSORS_FILE]
    assert "parts_sha256" in entry and digests.file_matches(stored, entry)
    assert all(c.present and c.matches for c in check_files(store, "m/v1", written.files))
    assert_same(
        tensorize.deserialize(str(stored), key), tensorize.load_source_weights(snapshot, "float16")
    )


def test_staged_file_on_another_filesystem_is_copied(tmp_path: Path):
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev:
        require("a second filesystem (/dev/shm)", "/dev/shm is absent or on the same one as /tmp")
    store = LocalStore(tmp_path / "store")
    shm = Path("/dev/shm") / f"modelpub-test-{os.getpid()}"
    shm.write_bytes(b"weights")
    try:
        store.put_staged("m/v1/model.tensors", shm)
        assert store.get_bytes("m/v1/model.tensors") == b"weights"
    finally:
        shm.unlink(missing_ok=True)


def test_git_mirror_streams_a_commit_and_refuses_an_absent_one(mirror_template, tmp_path: Path):
    from resources.sources.hub import GitMirrorHub, HubError
    from tests.conftest import LLAMA

    hub = GitMirrorHub(mirror_template)
    sha = hub.resolve(LLAMA, "main")
    snapshot = hub.snapshot(LLAMA, sha, tmp_path)
    source = mirror_template / LLAMA
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(
        p.name for p in source.iterdir() if p.name != ".git"
    )
    assert (snapshot / "model.safetensors").read_bytes() == (
        source / "model.safetensors"
    ).read_bytes()
    with pytest.raises(HubError, match="cannot read commit"):
        hub.snapshot(LLAMA, "0" * 40, tmp_path)
    assert not (tmp_path / "snapshots" / LLAMA / ("0" * 40)).exists()
