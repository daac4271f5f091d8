"""The S3 object store and key store against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import stat

import pytest
import torch

from dagster_project.definitions import build_definitions
from resources.formats import tensorize
from resources.formats.access import stream_kwargs
from resources.settings import Settings
from resources.storage import open_store
from resources.storage.keys import KeyStoreError, open_key_store
from resources.storage.s3 import S3Store
from resources.storage.store import NotFound, StoreError
from tests.s3_server import IDENTITIES, free_ports

pytestmark = pytest.mark.s3


@pytest.fixture
def store(s3_env) -> S3Store:
    store = open_store(s3_env.settings.store, s3_env.settings.store_s3)
    assert isinstance(store, S3Store)
    return store


def test_create_is_exactly_once_and_replace_is_compare_and_swap(store):
    assert store.create("registry/a.json", b"first")
    assert not store.create("registry/a.json", b"second")
    data, tag = store.read_versioned("registry/a.json")
    assert data == b"first"

    assert store.replace("registry/a.json", b"moved", tag)
    assert not store.replace("registry/a.json", b"stale writer", tag)
    assert store.get_bytes("registry/a.json") == b"moved"
    assert not store.replace("registry/absent.json", b"x", tag)
    assert store.read_versioned("registry/absent.json") is None


def test_files_round_trip_and_listing_is_relative_to_the_store(store, tmp_path):
    src = tmp_path / "config.json"
    src.write_bytes(b'{"a": 1}')
    store.put_file("vllm/org/m/v1/config.json", src)
    store.put_file("vllm/org/m/v10/config.json", src)
    store.create("vllm/org/m/v1/tok/vocab.json", b"{}")

    assert store.list("vllm/org/m/v1") == [
        "vllm/org/m/v1/config.json",
        "vllm/org/m/v1/tok/vocab.json",
    ]
    assert store.exists("vllm/org/m/v10/config.json")
    dest = tmp_path / "back.json"
    store.get_file("vllm/org/m/v1/config.json", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert store.uri("vllm/org/m/v1/config.json").endswith("/vllm/org/m/v1/config.json")

    store.delete("vllm/org/m/v10/config.json")
    assert not store.exists("vllm/org/m/v10/config.json")
    with pytest.raises(NotFound):
        store.get_bytes("vllm/org/m/v10/config.json")
    with pytest.raises(NotFound):
        store.get_file("vllm/org/m/v10/config.json", dest)


def test_each_whole_file_write_stages_in_a_directory_of_its_own_removed_after(store, tmp_path):
    """Files written whole before upload (the `vllm` format) go to a directory of their
    own per write: a retry of a run never shares one with a lost worker still writing,
    and nothing is left in the run's staging, even where the write failed."""
    key, staging = "vllm/org/m/v1/model.tensors", tmp_path / "staging"
    with store.staging_dir(key, staging) as first, store.staging_dir(key, staging) as second:
        assert first != second and first.parent == second.parent == staging
        (first / "model.tensors").write_bytes(b"tensors")
    with pytest.raises(RuntimeError), store.staging_dir(key, staging) as failed:
        (failed / "model.tensors").write_bytes(b"half")
        raise RuntimeError("serialization failed")
    assert list(staging.iterdir()) == []


def test_tensorizer_streams_encrypted_tensors_from_s3(store, tmp_path):
    """stream_kwargs carry the endpoint, credentials and force_http for an http endpoint."""
    from tensorizer import EncryptionParams

    weights = {"w": torch.randn(64, 32), "b": torch.arange(10)}
    key = EncryptionParams.random().key
    local = tmp_path / "model.tensors"
    tensorize.serialize(weights, local, key)
    store.put_file("vllm/org/m/v1/model.tensors", local)

    assert stream_kwargs(store)["force_http"] is True
    back = tensorize.deserialize(
        store.uri("vllm/org/m/v1/model.tensors"), key, stream_kwargs(store)
    )
    assert all(r["equal"] for r in tensorize.compare_weights(weights, back))


def count_requests(store) -> list[str]:
    """Every HTTP request the store's S3 client sends from now on (retries included)."""
    sent: list[str] = []
    store.client.meta.events.register(
        "before-send.s3.*", lambda request, **_: sent.append(request.url)
    )
    return sent


def test_wrong_credentials_fail_fast_and_say_what_to_set(s3_env, monkeypatch):
    monkeypatch.setenv("MODELPUB_S3_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(s3_env.settings.store, Settings.from_env().store_s3)
    attempts = count_requests(store)
    with pytest.raises(StoreError) as caught:
        store.list("registry")
    assert len(attempts) == 1  # refused once, never retried
    message = str(caught.value)
    assert s3_env.settings.store in message
    assert "SignatureDoesNotMatch" in message
    assert IDENTITIES["publisher"].access_key in message
    assert "MODELPUB_S3_SECRET_ACCESS_KEY" in message
    assert not caught.value.transient  # a retry cannot fix it: the run fails at once


def test_missing_bucket_is_named(s3_env, monkeypatch):
    admin = IDENTITIES["admin"]  # may see every bucket, so S3 says "no such bucket"
    monkeypatch.setenv("MODELPUB_S3_ACCESS_KEY_ID", admin.access_key)
    monkeypatch.setenv("MODELPUB_S3_SECRET_ACCESS_KEY", admin.secret_key)
    store = open_store("s3://no-such-bucket/models", Settings.from_env().store_s3)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        store.create("registry/x.json", b"{}")


def test_unreachable_endpoint_is_named(s3_env, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("MODELPUB_S3_ENDPOINT_URL", endpoint)
    store = open_store(s3_env.settings.store, Settings.from_env().store_s3)
    attempts = count_requests(store)
    with pytest.raises(StoreError, match="cannot reach the S3 endpoint") as caught:
        store.get_bytes("registry/x.json")
    # a bounded number of attempts (the client's retry budget), then the error
    assert 1 <= len(attempts) <= store.client.meta.config.retries["total_max_attempts"]
    assert endpoint in str(caught.value)
    assert "MODELPUB_S3_ENDPOINT_URL" in str(caught.value)
    assert caught.value.transient  # the publish step retries with backoff


def test_key_store_has_its_own_credentials_and_hands_vllm_a_private_file(s3_env, monkeypatch):
    settings = s3_env.settings
    keys = open_key_store(settings.keys, settings.store, settings.keys_s3)
    key = keys.create("org__m/v1")
    with keys.keyfile("org__m/v1") as path:
        assert path.read_bytes() == key
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()

    # The artifact store's credentials open nothing in the key store, and vice versa.
    with pytest.raises(StoreError, match="AccessDenied"):
        open_store(settings.keys, settings.store_s3).get_bytes("org__m/v1.key")
    monkeypatch.delenv("MODELPUB_KEYS_S3_ACCESS_KEY_ID")
    monkeypatch.delenv("MODELPUB_KEYS_S3_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="MODELPUB_KEYS_S3_ACCESS_KEY_ID"):
        open_key_store(settings.keys, settings.store, Settings.from_env().keys_s3).get("org__m/v1")


@pytest.mark.parametrize(
    "keys, artifacts",
    [
        ("s3://models/prod/keys", "s3://models/prod"),
        ("s3://models", "s3://models/prod"),
        ("s3://models/prod/", "s3://models/prod"),
    ],
)
def test_key_store_inside_the_artifact_store_is_refused(keys, artifacts):
    with pytest.raises(KeyStoreError, match="overlaps the artifact store"):
        open_key_store(keys, artifacts)


def test_key_store_beside_the_artifact_store_is_allowed(s3_env):
    # "prod-keys" shares a string prefix with "prod", not a directory.
    keys = open_key_store("s3://keys/prod-keys", "s3://keys/prod", s3_env.settings.keys_s3)
    assert keys.store.uri("k.key") == "s3://keys/prod-keys/k.key"


def test_dagster_resources_hold_secret_names_not_values(s3_env):
    from dagster import EnvVar

    resources = build_definitions(s3_env.settings).resources
    for name, variable in (
        ("object_store", "MODELPUB_S3_SECRET_ACCESS_KEY"),
        ("key_store", "MODELPUB_KEYS_S3_SECRET_ACCESS_KEY"),
    ):
        secret = resources[name].s3.aws_secret_access_key
        assert isinstance(secret, EnvVar) and secret == variable
