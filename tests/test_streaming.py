"""Streaming publish: tensorizer writes into a file whose parts upload as it goes, and what
lands in the store is the file tensorizer would have written locally."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from resources.formats import parted, streaming, tensorize
from resources.formats.artifact import write_artifact
from resources.formats.format import StagingFull
from resources.formats.streaming import MIN_PART, StreamedFile
from resources.settings import Settings
from resources.storage import digests, open_store
from resources.storage.store import StoreError
from tests.conftest import LLAMA, Env
from tests.published import stores
from tests.real_parts import tmpfs

PART = MIN_PART


class Parts:
    """A sink that keeps the parts in a directory, in the order they arrive (a stand-in for
    the multipart upload, to see the file's layout; S3 itself is tested below)."""

    def __init__(self, root: Path):
        self.root, self.order, self.completed, self.aborted = root, [], None, False
        root.mkdir()

    def upload(self, number: int, data: bytes, sha256: bytes) -> None:
        assert hashlib.sha256(data).digest() == sha256
        (self.root / str(number)).write_bytes(data)
        self.order.append(number)

    def complete(self, count: int) -> None:
        self.completed = count

    def abort(self) -> None:
        self.aborted = True

    def joined(self) -> bytes:
        return b"".join((self.root / str(n)).read_bytes() for n in range(1, self.completed + 1))


def _batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """About 64 MiB of float32 tensors in 16 batches: many parts, many end markers."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {f"layer{b}.w{i}": torch.randn(512, 1024, generator=generator) for i in range(2)}
        for b in range(16)
    ]


def test_a_streamed_file_is_byte_for_byte_the_local_file(tmp_path):
    local = tmp_path / "local.tensors"
    tensorize.serialize(_batches(), local, None)
    sink = Parts(tmp_path / "parts")
    streamed = StreamedFile(sink, "model.tensors", tmp_path / "staging", PART, in_flight=1)
    stats = tensorize.serialize(_batches(), streamed, None)
    entry = streamed.finish()
    assert entry["size"] == stats.bytes_written == local.stat().st_size
    assert sink.joined() == local.read_bytes()
    assert digests.file_matches(local, entry)  # the per-part digests are the local file's
    parts = -(-local.stat().st_size // PART)
    assert sink.completed == parts > 4
    assert sink.order[-1] == 1  # the header's part, rewritten to the end, goes last
    # the staging directory held the header's part, a batch, the part being written and
    # two handed to the sink, not the file
    batch = sum(t.nbytes for t in _batches()[0].values())
    # parted.py bounds it by batch + (in_flight + 5) x part, one part for a batch that
    # straddles parts: here it stays within one part less
    bound = batch + (1 + 4) * PART
    assert streamed.peak_held <= bound < 0.5 * local.stat().st_size
    assert not list((tmp_path / "staging").iterdir())


def test_a_tensor_larger_than_the_staging_bound_streams_part_by_part(tmp_path):
    # an embedding of 48 MiB between small tensors: its data's parts go up while it is
    # being written, so the spool never holds the tensor
    generator = torch.Generator().manual_seed(1)
    weights = [
        {"norm": torch.randn(1000, generator=generator)},
        {"embed": torch.randn(12 << 20, generator=generator), "bias": torch.randn(7)},
        {"head": torch.randn(3, 5, generator=generator)},
    ]
    local = tmp_path / "local.tensors"
    tensorize.serialize(weights, local, None)
    sink = Parts(tmp_path / "parts")
    streamed = StreamedFile(sink, "model.tensors", tmp_path / "staging", PART, in_flight=1)
    tensorize.serialize(weights, streamed, None)
    streamed.finish()
    assert sink.joined() == local.read_bytes()
    assert sink.order[-1] == 1
    # the prologue's part, the embedding's header part, the part being written, and the
    # in_flight + 2 handed to the sink
    assert streamed.peak_held <= (1 + 5) * PART < 0.75 * weights[1]["embed"].nbytes


def test_a_write_into_a_part_already_sent_fails_the_stream(tmp_path):
    # the guard against a tensorizer that writes back elsewhere than its prologue
    sink = Parts(tmp_path / "parts")
    streamed = StreamedFile(sink, "model.tensors", tmp_path / "staging", PART)
    streamed.prologue_written()
    streamed.write(bytes(3 * PART))  # parts 2 and 3 are whole, so they are sent
    streamed.seek(PART + 10)
    with pytest.raises(parted.PartLayoutError, match=f"rewrote byte {PART + 10}"):
        streamed.write(b"late")
    streamed.abort()
    assert sink.aborted


def test_an_encrypted_stream_reads_back_with_the_key(tmp_path):
    key = bytes(range(32))
    sink = Parts(tmp_path / "parts")
    streamed = StreamedFile(sink, "model.tensors", tmp_path / "staging", PART)
    tensorize.serialize(_batches(), streamed, key)
    streamed.finish()
    (tmp_path / "joined.tensors").write_bytes(sink.joined())
    back = tensorize.deserialize(str(tmp_path / "joined.tensors"), key)
    expected = {n: t for batch in _batches() for n, t in batch.items()}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[n], expected[n]) for n in expected)


def test_a_failed_part_aborts_the_upload_and_leaves_no_spool(tmp_path):
    class Failing(Parts):
        def upload(self, number: int, data: bytes, sha256: bytes) -> None:
            raise StoreError("the endpoint went away")

    sink = Failing(tmp_path / "parts")
    streamed = StreamedFile(sink, "model.tensors", tmp_path / "staging", PART)
    with pytest.raises(StoreError, match="went away"):
        tensorize.serialize(_batches(), streamed, None)
        streamed.finish()
    streamed.abort()
    assert sink.aborted and sink.completed is None
    assert not list((tmp_path / "staging").iterdir())


@pytest.mark.s3
def test_publish_to_s3_streams_and_reads_back_as_the_source(s3_env: Env):
    registry, keys = stores(s3_env)
    store = registry.store
    key = keys.create("streamed/v1")
    staging = s3_env.root / "staging"
    written = write_artifact(
        store, "vllm/streamed/v1", s3_env.mirror / LLAMA, "float16", key, staging
    )
    assert written.peak_staging is not None and not list(staging.iterdir())
    entry = written.files["model.tensors"]
    local = s3_env.root / "back.tensors"
    store.get_file("vllm/streamed/v1/model.tensors", local)
    assert entry["size"] == local.stat().st_size and "sha256" not in entry
    assert digests.file_matches(local, entry)
    assert digests.chunks_match(store.read_chunks("vllm/streamed/v1/model.tensors"), entry)
    assert written.files["config.json"]["sha256"]  # staged files keep the whole-file digest
    back = tensorize.deserialize(store.uri("vllm/streamed/v1/model.tensors"), key, _stream(store))
    source = tensorize.load_source_weights(s3_env.mirror / LLAMA, "float16")
    assert all(r["equal"] for r in tensorize.compare_weights(source, back))
    assert not store.unfinished_uploads("vllm/streamed/")


@pytest.mark.s3
def test_a_part_damaged_on_the_way_is_refused_by_s3_and_sent_again(s3_env: Env, tmp_path):
    registry, _ = stores(s3_env)
    store = registry.store
    damaged = []

    def damage_the_first(request, **_) -> None:
        if not damaged:
            damaged.append(request.url)
            body = request.body.getbuffer()  # the part, as botocore is about to send it
            body[1000] ^= 0xFF

    sent, refused = [], []

    def count_sends(request, **_) -> None:
        sent.append(request.url)

    def note_refusal(response, **_) -> None:
        if response is not None:  # (http response, parsed): what the server answered
            refused.append(response[1].get("Error", {}).get("Code"))

    events = store.client.meta.events
    events.register("before-send.s3.UploadPart", damage_the_first)
    events.register("before-send.s3.UploadPart", count_sends)
    events.register("needs-retry.s3.UploadPart", note_refusal)
    streamed = StreamedFile(
        store.part_sink("damaged.tensors"), "damaged.tensors", tmp_path / "staging", PART
    )
    tensorize.serialize(_batches()[:4], streamed, None)
    entry = streamed.finish()
    # the server saw a part whose bytes did not match its SHA-256, answered BadDigest,
    # and the same part was sent again ...
    assert len(damaged) == 1 and "BadDigest" in refused
    assert sent.count(damaged[0]) == 2
    local = tmp_path / "back.tensors"
    store.get_file("damaged.tensors", local)
    assert digests.file_matches(local, entry)  # ... refused it, and got it again intact
    expected = tmp_path / "local.tensors"
    tensorize.serialize(_batches()[:4], expected, None)
    assert local.read_bytes() == expected.read_bytes()


def _stream(store):
    from resources.formats.access import stream_kwargs

    return stream_kwargs(store)


@pytest.mark.s3
def test_wrong_credentials_fail_in_one_line_before_serializing(s3_env: Env, monkeypatch):
    monkeypatch.setenv("MODELPUB_S3_SECRET_ACCESS_KEY", "wrong")
    wrong = Settings.from_env()
    store = open_store(wrong.store, wrong.store_s3)
    staging = s3_env.root / "staging"
    with pytest.raises(StoreError) as failed:
        write_artifact(store, "vllm/x/v1", s3_env.mirror / LLAMA, "float16", None, staging)
    assert "refused to start an upload of" in str(failed.value)
    assert len(str(failed.value).splitlines()) == 1
    registry, _ = stores(s3_env)
    assert not registry.store.list("vllm/x/")


def _big_snapshot(root: Path) -> Path:
    """A 128 MiB float32 checkpoint whose embedding alone (96 MiB) is bigger than the
    staging disk below."""
    from safetensors.torch import save_file

    snapshot = root / "big"
    snapshot.mkdir()
    tensors = {n: t for b in _batches()[:8] for n, t in b.items()}
    tensors["embed"] = torch.randn(24 << 20, generator=torch.Generator().manual_seed(2))
    save_file(tensors, snapshot / "model.safetensors")
    return snapshot


@pytest.mark.s3
def test_a_model_bigger_than_the_staging_disk_publishes_to_s3(s3_env: Env, monkeypatch):
    # 5 MiB parts and 4 MiB batches, so this small model has the shape of a big one
    monkeypatch.setattr(streaming, "PART_SIZE", PART)
    monkeypatch.setattr(streaming, "BATCH_BYTES", 4 << 20)
    registry, _ = stores(s3_env)
    snapshot = _big_snapshot(s3_env.root)
    size = (snapshot / "model.safetensors").stat().st_size
    # the bound: a 4 MiB batch + (4 + 4) parts of 5 MiB, 44 MiB
    with tmpfs(s3_env.root / "staging", "64m") as staging:
        written = write_artifact(registry.store, "vllm/big/v1", snapshot, None, None, staging)
        with tmpfs(s3_env.root / "tiny", "256k") as tiny, pytest.raises(StagingFull) as full:
            write_artifact(registry.store, "vllm/big/v2", snapshot, None, None, tiny)
    assert written.files["model.tensors"]["size"] > size > 96 << 20 > 64 << 20
    assert written.peak_staging <= (4 << 20) + 8 * PART
    assert str(full.value).startswith(
        f"no space left in the staging directory {s3_env.root / 'tiny'} while spooling"
    )
    assert not registry.store.list("vllm/big/v2/")
    assert not registry.store.unfinished_uploads("vllm/big/")
