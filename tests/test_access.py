"""What tensorizer and vLLM are told to reach a store's tensors, from the store's own
description of where it is (plain inputs: no server is contacted)."""

from __future__ import annotations

import pytest

from resources.formats.access import stream_kwargs, vllm_loader_options
from resources.settings import EnvValue, S3Env
from resources.storage.s3 import S3Store
from resources.storage.store import LocalStore, StoreError

KEY = "vllm/org/m/v1/model.tensors"


def s3_store(**credentials: str) -> S3Store:
    values = {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1", **credentials}
    s3 = S3Env({name: EnvValue(name, value) for name, value in values.items()})
    return S3Store("bucket", "pub", s3, "MODELPUB_S3")


def test_a_local_store_needs_only_paths(tmp_path):
    store = LocalStore(tmp_path)
    assert stream_kwargs(store) == {}
    assert vllm_loader_options(store, KEY, with_secrets=True) == {
        "tensorizer_uri": str(tmp_path / KEY)
    }


def test_s3_options_carry_endpoint_region_and_secrets_only_when_asked():
    store = s3_store(aws_access_key_id="AKID", aws_secret_access_key="SECRET")
    assert stream_kwargs(store) == {
        "s3_endpoint": "http://127.0.0.1:9",
        "s3_access_key_id": "AKID",
        "s3_secret_access_key": "SECRET",
        "s3_region_name": "eu-west-1",
        "force_http": True,
    }
    printed = vllm_loader_options(store, KEY, with_secrets=False)
    assert printed == {
        "tensorizer_uri": f"s3://bucket/pub/{KEY}",
        "s3_endpoint": "http://127.0.0.1:9",
        "stream_kwargs": {"s3_region_name": "eu-west-1", "force_http": True},
    }
    secret = vllm_loader_options(store, KEY, with_secrets=True)
    assert (secret["s3_access_key_id"], secret["s3_secret_access_key"]) == ("AKID", "SECRET")


def test_temporary_credentials_are_refused_with_what_to_set():
    store = s3_store(
        aws_access_key_id="ASIA", aws_secret_access_key="SECRET", aws_session_token="TOKEN"
    )
    with pytest.raises(StoreError, match="set MODELPUB_S3_ACCESS_KEY_ID and"):
        stream_kwargs(store)
    assert "s3_access_key_id" not in vllm_loader_options(store, KEY, with_secrets=False)
