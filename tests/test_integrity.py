"""`modelpub verify` catches tampering with what is already published."""

import json
from pathlib import Path

import pytest

from dagster_project.cli import main
from resources.storage.store import LocalStore
from tests.conftest import LLAMA
from tests.published import publish_tiny, stores

REF = f"{LLAMA}@v1"


@pytest.fixture
def published(env) -> Path:
    """v1 of the tiny Llama, written by the real artifact writer, signed and recorded."""
    record = publish_tiny(env, LLAMA)
    return LocalStore(env.settings.store).path(record.location[0])


def verify(capsys) -> tuple[int, str]:
    code = main(["verify", LLAMA])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_untouched_version_verifies(published, capsys):
    code, out = verify(capsys)
    assert code == 0 and f"{REF}: OK (5 files" in out


def test_verify_reads_each_file_once(env, published, capsys, monkeypatch):
    # the digest, the signature's sha256 and tensorizer's check share one read (on S3:
    # one GET per file, not three for the tensors)
    reads: list[str] = []

    def counted(read):
        def call(self, key: str):
            reads.append(key.rsplit("/", 1)[-1])
            return read(self, key)

        return call

    for method in ("read_chunks", "open_read"):  # as chunks, or into the reader's buffers
        monkeypatch.setattr(LocalStore, method, counted(getattr(LocalStore, method)))
    code, out = verify(capsys)
    assert code == 0, out
    registry, _ = stores(env)
    assert sorted(reads) == sorted(registry.resolve(REF).files)  # each, exactly once


def test_flipped_byte_is_caught(published, capsys):
    tensors = published / "model.tensors"
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0x10
    tensors.write_bytes(bytes(data))
    code, out = verify(capsys)
    assert code == 2
    assert f"{REF}: TAMPERED OR DAMAGED" in out
    assert "model.tensors: sha256 does not match the record" in out
    assert "was modified after publishing" in out


def test_truncated_file_is_caught(published, capsys):
    tensors = published / "model.tensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    code, out = verify(capsys)
    assert code == 2 and "model.tensors: sha256 does not match" in out
    assert "was modified after publishing" in out


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
    assert f"{REF}: WRONG OR MISSING KEY" in out


def test_a_wrong_key_is_told_apart_from_a_changed_file(published, env, capsys):
    """The files are the ones published (each part checked before tensorizer read it), so
    a key that does not decrypt them is the key store's problem, not the version's."""
    for key in Path(env.settings.keys).rglob("*.key"):
        key.write_bytes(bytes(32))
    code, out = verify(capsys)
    assert code == 2 and f"{REF}: WRONG OR MISSING KEY" in out
    assert "its bytes are the ones published, so the key is not the one it was encrypted" in out
    assert "does not match the record" not in out


def test_verify_answers_scripts_in_json(published, capsys):
    assert main(["verify", LLAMA, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "reference": REF,
        "ok": True,
        "files": 5,
        "tensors": report["tensors"],
        "signing_key": report["signing_key"],
        "problems": [],
    }
    assert report["tensors"] > 0
    (published / "config.json").write_text("{}")
    assert main(["verify", LLAMA, "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["problems"] == [
        "config.json: sha256 does not match the record",
        "signature: does not match the version as stored (config.json changed since signing)",
    ]
