"""`modelpub verify` catches tampering with what is already published."""

import json
from pathlib import Path

import pytest

from dagster_project.cli import main
from resources.formats.artifact import write_artifact
from resources.layout import model_prefix
from resources.registry import Registry
from resources.storage.keys import open_key_store
from resources.storage.store import LocalStore
from tests.conftest import LLAMA
from tests.records import version_record

REF = f"{LLAMA}@v1"


@pytest.fixture
def published(env) -> Path:
    """v1 of the tiny Llama, written by the real artifact writer and recorded."""
    store = LocalStore(env.settings.store)
    registry = Registry(store)
    keys = open_key_store(env.settings.keys, env.settings.store)
    suffix = registry.reserve_suffix(LLAMA, "test-run")
    key_id = f"{LLAMA.replace('/', '__')}/{suffix}"
    prefix = model_prefix(LLAMA, suffix)
    staging = env.root / "staging"
    staging.mkdir()
    written = write_artifact(
        store, prefix, env.mirror / LLAMA, "float16", keys.create(key_id), staging
    )
    registry.publish(
        version_record(LLAMA, suffix, encrypted=True, key_id=key_id, files=written.files)
    )
    registry.move_alias(LLAMA, "latest", suffix)
    return store.path(prefix)


def verify(capsys) -> tuple[int, str]:
    code = main(["verify", LLAMA])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_untouched_version_verifies(published, capsys):
    code, out = verify(capsys)
    assert code == 0 and f"{REF}: OK (5 files" in out


def test_flipped_byte_is_caught(published, capsys):
    tensors = published / "model.tensors"
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0x10
    tensors.write_bytes(bytes(data))
    code, out = verify(capsys)
    assert code == 2
    assert "model.tensors: sha256 does not match the record" in out
    assert "modified after publishing" in out or "corrupted" in out


def test_truncated_file_is_caught(published, capsys):
    tensors = published / "model.tensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    code, out = verify(capsys)
    assert code == 2 and "model.tensors: sha256 does not match" in out
    assert "cannot read" in out or "corrupted" in out or "modified" in out


def test_swapped_config_is_caught(published, capsys):
    config = published / "config.json"
    changed = json.loads(config.read_text()) | {"num_hidden_layers": 1}
    config.write_text(json.dumps(changed))
    code, out = verify(capsys)
    assert code == 2 and "config.json: sha256 does not match the record" in out
    assert "model.tensors" not in out


def test_record_that_does_not_match_its_files_is_caught(published, env, capsys):
    record_path = Path(env.settings.store) / f"registry/{LLAMA}/versions/v1.json"
    record = json.loads(record_path.read_text())
    record["files"]["tokenizer.json"]["sha256"] = "f" * 64
    record_path.write_text(json.dumps(record))
    code, out = verify(capsys)
    assert code == 2 and "tokenizer.json: sha256 does not match the record" in out


def test_missing_key_is_a_clear_error(published, env, capsys):
    for key in Path(env.settings.keys).rglob("*.key"):
        key.unlink()
    code, out = verify(capsys)
    assert code == 2 and "is not in the key store" in out


def test_verify_answers_scripts_in_json(published, capsys):
    assert main(["verify", LLAMA, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "reference": REF,
        "ok": True,
        "files": 5,
        "tensors": report["tensors"],
        "problems": [],
    }
    assert report["tensors"] > 0
    (published / "config.json").write_text("{}")
    assert main(["verify", LLAMA, "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["problems"] == [
        "config.json: sha256 does not match the record"
    ]
