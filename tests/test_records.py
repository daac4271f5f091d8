"""Version records are parsed once, where the registry reads them: today's records and
those written before the `schema` field existed stay readable, unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resources.registry.records import (
    AdapterSettings,
    AdapterVersion,
    ModelSettings,
    ModelVersion,
    parse_version,
)
from resources.registry.registry import Registry, RegistryError
from resources.storage.store import LocalStore
from tests.records import version_record

FIXTURES = Path(__file__).parent / "fixtures" / "records"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_a_model_record_of_todays_shape_reads_back_unchanged():
    stored = fixture("model-schema2.json")  # written by `make demo`
    record = parse_version(json.dumps(stored).encode())
    assert isinstance(record, ModelVersion)
    assert record.schema_ == 2 and record.reference == "modelpub-demo/tiny-llama@v1"
    assert record.settings == ModelSettings(dtype="float32", encrypted=True)
    assert record.location == ("vllm/modelpub-demo/tiny-llama/v1", "model.tensors")
    assert record.to_dict() == stored


def test_an_adapter_record_reads_as_an_adapter_under_its_base():
    stored = fixture("adapter-schema2.json")
    record = parse_version(stored)
    assert isinstance(record, AdapterVersion)
    assert record.base_reference == "modelpub-demo/tiny-llama@v1"
    assert isinstance(record.settings, AdapterSettings) and record.settings.rank == 8
    prefix, tensors = record.location
    assert prefix == "vllm/modelpub-demo/tiny-llama/v1/adapters/modelpub-demo/tiny-llama-lora/v1"
    assert tensors == "adapter_model.tensors"
    assert record.to_dict() == stored


def test_a_record_written_before_schema_and_kind_reads_as_a_schema_1_model():
    stored = fixture("model-schema1.json")
    assert "schema" not in stored and "kind" not in stored
    record = parse_version(stored)
    assert isinstance(record, ModelVersion) and record.schema_ == 1
    assert record.settings == ModelSettings(dtype="float32", encrypted=True)


def test_fields_a_newer_writer_added_are_kept():
    stored = fixture("model-schema2.json") | {"signature": "sig.bundle"}
    assert parse_version(stored).to_dict()["signature"] == "sig.bundle"


def test_a_record_this_version_cannot_read_is_one_clear_error(tmp_path):
    registry = Registry(LocalStore(tmp_path))
    registry.publish(version_record("org/m", "v1"))
    path = tmp_path / "registry/org/m/versions/v1.json"
    path.write_text(json.dumps({"repo_id": "org/m", "suffix": "v1", "kind": "dataset"}))
    with pytest.raises(RegistryError, match=r"org/m@v1: its record .* upgrade modelpub") as err:
        registry.version("org/m", "v1")
    assert "\n" not in str(err.value)
