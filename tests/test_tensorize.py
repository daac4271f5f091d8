"""Tensorizer round trips: exact bytes back, and wrong keys or flipped bytes are caught."""

import os
import stat

import pytest
import torch

from resources.formats import tensorize
from resources.storage.keys import KeyStoreError, open_key_store
from tests.conftest import LLAMA, OPT


@pytest.fixture(params=[LLAMA, OPT])
def weights(request, mirror_template):
    return tensorize.load_source_weights(mirror_template / request.param, "float16")


def flip_byte(path, offset_from_end: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        byte = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("encrypt", [True, False])
def test_round_trip_is_bit_exact(weights, tmp_path, encrypt):
    from tensorizer import EncryptionParams

    key = EncryptionParams.random().key if encrypt else None
    path = tmp_path / "model.tensors"
    tensorize.serialize(weights, path, key)
    back = tensorize.deserialize(str(path), key)
    rows = tensorize.compare_weights(weights, back)
    assert len(rows) == len(weights) and all(r["equal"] for r in rows)
    assert all(r["published_dtype"] == "float16" for r in rows if r["source_dtype"] == "float16")


def test_comparison_catches_a_changed_tensor(weights):
    changed = dict(weights)
    name = next(iter(changed))
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1
    rows = {r["name"]: r["equal"] for r in tensorize.compare_weights(weights, changed)}
    assert rows[name] is False and sum(not ok for ok in rows.values()) == 1
    missing = {k: v for k, v in weights.items() if k != name}
    assert not all(r["equal"] for r in tensorize.compare_weights(weights, missing))


def test_wrong_key_is_refused_with_a_clear_error(weights, tmp_path):
    from tensorizer import EncryptionParams

    path = tmp_path / "model.tensors"
    tensorize.serialize(weights, path, EncryptionParams.random().key)
    with pytest.raises(Exception) as info:
        tensorize.deserialize(str(path), EncryptionParams.random().key)
    message = tensorize.describe_load_error(info.value, str(path), "org__m/v1")
    assert message.startswith(f"key 'org__m/v1' does not decrypt {path}")


@pytest.mark.parametrize("encrypt", [True, False])
def test_one_flipped_byte_is_caught(weights, tmp_path, encrypt):
    from tensorizer import EncryptionParams

    key = EncryptionParams.random().key if encrypt else None
    path = tmp_path / "model.tensors"
    tensorize.serialize(weights, path, key)
    flip_byte(path)
    with pytest.raises(Exception) as info:
        tensorize.deserialize(str(path), key)
    message = tensorize.describe_load_error(info.value, str(path), "k")
    assert ("is corrupted" in message) or ("modified after publishing" in message)


def test_keys_are_private_files_outside_the_store(tmp_path):
    keys = open_key_store(str(tmp_path / "keys"), str(tmp_path / "store"))
    key = keys.create("org__m/v1")
    path = tmp_path / "keys/org__m/v1.key"
    assert path.read_bytes() == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with keys.keyfile("org__m/v1") as keyfile:
        assert keyfile.read_bytes() == key
    with pytest.raises(KeyStoreError, match="never reused"):
        keys.create("org__m/v1")
    with pytest.raises(KeyStoreError, match="not in the key store"):
        keys.get("org__m/v9")
    path.write_bytes(b"")  # a key file emptied by a failed copy, say
    with pytest.raises(KeyStoreError, match="'org__m/v1' in the key store .* is 0 bytes, not 32"):
        keys.get("org__m/v1")


@pytest.mark.parametrize("keys", ["store/keys", "store", "."])
def test_key_store_inside_the_artifact_store_is_refused(tmp_path, keys):
    with pytest.raises(KeyStoreError, match="never sit beside the artifacts"):
        open_key_store(str(tmp_path / keys), str(tmp_path / "store"))


def test_source_without_safetensors_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(tensorize.TensorizeError, match="no \\*.safetensors"):
        tensorize.load_source_weights(tmp_path, "float16")
