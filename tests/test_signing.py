"""Every published version is signed (OpenSSF model signing, a key from the key store) over
its files and its record; `modelpub verify` and the upstream `model_signing verify key`
on a `modelpub fetch` directory refuse whatever changed after publishing."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path

import pytest

from dagster_project.cli import main
from resources import layout
from resources.registry import signing
from resources.registry.registry import Registry
from resources.registry.signing import (
    PUBLIC_KEY_FILE,
    RECORD_FILE,
    SIGNATURE_FILE,
    SigningError,
    fingerprint,
    public_pem,
    sign_record,
)
from resources.storage.keys import open_key_store
from resources.storage.store import LocalStore
from tests.conftest import LLAMA, OPT
from tests.processes import run_tool
from tests.published import publish, publish_tiny, stage, stores
from tests.records import recorded_sha256, version_record

REF = f"{LLAMA}@v1"
ADAPTER_FILES = {"adapter_model.tensors": b"tensors", "adapter_config.json": b'{"r": 8}'}


@pytest.fixture
def published(env):
    return publish_tiny(env, LLAMA)


def verify(capsys, ref: str = REF) -> tuple[int, str]:
    code = main(["verify", ref])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def fetch(capsys, dest: Path, ref: str = REF) -> int:
    code = main(["fetch", ref, str(dest)])
    capsys.readouterr()
    return code


def upstream_verify(dest: Path, public_key: Path | None = None):
    """The upstream CLI, unchanged, on a directory `modelpub fetch` wrote."""
    return run_tool(
        "model_signing",
        "verify",
        "key",
        str(dest),
        "--signature",
        str(dest / SIGNATURE_FILE),
        "--public_key",
        str(public_key or dest / PUBLIC_KEY_FILE),
        timeout=120,
    )


def store_path(env, key: str) -> Path:
    return LocalStore(env.settings.store).path(key)


def test_a_published_version_is_signed_over_its_files_and_record(env, published, capsys):
    store = store_path(env, "")
    public = (store / layout.public_key(published.signing_key)).read_bytes()
    private = (Path(env.settings.keys) / layout.SIGNING_KEY).read_bytes()
    assert published.signing_key == fingerprint(public) == fingerprint(public_pem(private))

    bundle = json.loads((store / layout.signature_key(LLAMA, "v1")).read_text())
    assert bundle["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == published.signing_key
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    stored = Registry(LocalStore(env.settings.store)).stored(LLAMA, "v1")
    assert signed.pop(RECORD_FILE) == hashlib.sha256(stored).hexdigest()
    assert signed == recorded_sha256(published, LocalStore(env.settings.store))

    code, out = verify(capsys)
    assert code == 0 and f"signed by key {published.signing_key}" in out


def test_a_fetched_version_verifies_with_the_upstream_tool(env, published, capsys, tmp_path):
    dest = tmp_path / "fetched"
    assert fetch(capsys, dest) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [*published.files, RECORD_FILE, SIGNATURE_FILE, PUBLIC_KEY_FILE]
    )
    assert (dest / RECORD_FILE).read_bytes() == store_path(
        env, layout.registry_key(LLAMA, "versions", "v1")
    ).read_bytes()
    done = upstream_verify(dest)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr

    (dest / "tokenizer.json").write_text("{}")  # the upstream tool refuses a changed file too
    done = upstream_verify(dest)
    assert done.returncode == 1 and "tokenizer.json" in done.stderr


def test_fetch_wants_an_empty_directory(env, published, capsys, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["fetch", REF, str(tmp_path / "full")]) == 1
    assert "is not an empty directory" in capsys.readouterr().err


def test_a_file_changed_in_the_store_is_refused(env, published, capsys, tmp_path):
    tensors = store_path(env, f"{published.location[0]}/model.tensors")
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0x10
    tensors.write_bytes(bytes(data))
    code, out = verify(capsys)
    assert code == 2
    assert "signature: does not match the version as stored (model.tensors changed" in out
    assert main(["fetch", REF, str(tmp_path / "fetched")]) == 1
    assert "changed after publishing" in capsys.readouterr().err


def test_a_record_changed_in_the_registry_is_refused(env, published, capsys, tmp_path):
    path = store_path(env, layout.registry_key(LLAMA, "versions", "v1"))
    record = json.loads(path.read_text()) | {"hf_ref": "a-branch-it-never-came-from"}
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    code, out = verify(capsys)
    assert code == 2
    assert out.splitlines()[1:] == [
        "  signature: does not match the version as stored (record.json changed since signing)"
    ]
    dest = tmp_path / "fetched"
    assert fetch(capsys, dest) == 0  # what the registry holds now, for the upstream check
    done = upstream_verify(dest)
    assert done.returncode == 1 and "record.json" in done.stderr


def other_key(tmp_path: Path):
    """A key store of someone else's, with its own signing key."""
    return open_key_store(str(tmp_path / "other-keys"), str(tmp_path / "other-store"))


def test_a_replaced_public_key_is_refused(env, published, capsys, tmp_path):
    dest = tmp_path / "fetched"
    assert fetch(capsys, dest) == 0
    impostor = signing.Signer.of(other_key(tmp_path)).public
    store_path(env, layout.public_key(published.signing_key)).write_bytes(impostor)

    code, out = verify(capsys)
    assert code == 2 and "was replaced after publishing; restore it" in out
    assert main(["fetch", REF, str(tmp_path / "again")]) == 1
    assert "was replaced after publishing" in capsys.readouterr().err
    (tmp_path / "impostor.pem").write_bytes(impostor)
    done = upstream_verify(dest, tmp_path / "impostor.pem")  # verified with key B
    assert done.returncode == 1 and "Key mismatch" in done.stderr


def test_a_version_signed_again_by_another_key_is_refused(env, published, capsys):
    """Whoever can write the artifact store can sign the version again with a key of
    their own (bundle, public key and record all consistent): the key store does not
    trust that key."""
    registry, _ = stores(env)
    resigned = sign_record(
        registry.store, other_key(env.root), published, recorded_sha256(published, registry.store)
    )
    assert resigned.signing_key != published.signing_key
    path = store_path(env, layout.registry_key(LLAMA, "versions", "v1"))
    path.write_bytes(resigned.to_json())

    code, out = verify(capsys)
    assert code == 2
    assert f"made with key {resigned.signing_key}, which the key store does not trust" in out


def test_a_version_published_before_signing_is_reported_unsigned(env, capsys, tmp_path):
    registry, _ = stores(env)
    staged, _ = stage(env, LLAMA)
    old = version_record(
        LLAMA, staged.suffix, encrypted=True, key_id=staged.key_id, files=staged.files
    )
    registry.publish(old)  # as publishes before signing existed wrote it
    assert "signing_key" not in json.loads(registry.stored(LLAMA, "v1"))
    code, out = verify(capsys)
    assert code == 2
    assert out.splitlines() == [
        f"{REF}: UNSIGNED",
        "  unsigned: published before versions were signed, so nothing vouches for it; "
        "publish it again (`modelpub publish <entry> --force`) to get a signed version",
    ]
    assert main(["fetch", REF, str(tmp_path / "fetched")]) == 1
    assert "unsigned" in capsys.readouterr().err


def test_a_removed_signature_is_refused(env, published, capsys):
    store_path(env, layout.signature_key(LLAMA, "v1")).unlink()
    code, out = verify(capsys)
    assert code == 2 and "sigstore.json does not exist; it was removed after publishing" in out


def test_if_signing_fails_nothing_is_published(env):
    _, keys = stores(env)
    (Path(env.settings.keys) / "signing").mkdir()
    (Path(env.settings.keys) / layout.SIGNING_KEY).write_text("not a key")
    staged, report = stage(env, LLAMA)
    with pytest.raises(SigningError, match="signing/modelpub.pem is not a PEM private key"):
        publish(env, staged, report)
    registry, _ = stores(env)
    assert registry.versions(LLAMA) == []
    assert not registry.store.exists(layout.signature_key(LLAMA, staged.suffix))


def test_two_first_publishes_at_once_share_one_signing_key(env, monkeypatch):
    """Both find no signing key and make one; the one stored first signs both."""
    staged = [stage(env, repo) for repo in (LLAMA, OPT)]
    both_made = threading.Barrier(2, timeout=30)
    make = signing.new_private_key

    def made_together() -> bytes:
        key = make()
        both_made.wait()
        return key

    monkeypatch.setattr(signing, "new_private_key", made_together)
    records = [None, None]

    def run(i: int) -> None:
        records[i] = publish(env, *staged[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert records[0].signing_key == records[1].signing_key
    public_keys = stores(env)[0].store.list("registry/_signing")
    assert public_keys == [layout.public_key(records[0].signing_key)]
    for repo in (LLAMA, OPT):
        assert main(["verify", repo]) == 0


def test_the_signing_key_is_never_in_the_artifact_store(env, published):
    private = (Path(env.settings.keys) / layout.SIGNING_KEY).read_bytes()
    store = stores(env)[0].store
    stored = store.list("")
    assert layout.public_key(published.signing_key) in stored
    for key in stored:
        data = store.get_bytes(key)
        assert b"PRIVATE KEY" not in data and private not in data, key


def test_after_rotating_the_key_old_versions_verify_while_the_old_key_is_kept(env, capsys):
    first = publish_tiny(env, LLAMA)
    keys_dir = Path(env.settings.keys)
    retired = keys_dir / layout.retired_signing_key(first.signing_key)
    retired.parent.mkdir(parents=True)
    (keys_dir / layout.SIGNING_KEY).rename(retired)  # what an operator does to rotate

    second = publish_tiny(env, LLAMA)
    assert second.signing_key != first.signing_key
    assert verify(capsys, f"{LLAMA}@v1")[0] == 0 and verify(capsys, f"{LLAMA}@v2")[0] == 0

    retired.unlink()  # the old key withdrawn (say it leaked): its signatures no longer count
    code, out = verify(capsys, f"{LLAMA}@v1")
    assert code == 2 and "which the key store does not trust" in out
    assert verify(capsys, f"{LLAMA}@v2")[0] == 0


@pytest.mark.s3
def test_a_version_published_to_s3_is_signed_and_verifies_upstream(s3_env, capsys, tmp_path):
    record = publish_tiny(s3_env, LLAMA)
    assert record.signing_key
    code, out = verify(capsys)
    assert code == 0, out
    dest = tmp_path / "fetched"
    assert fetch(capsys, dest) == 0
    done = upstream_verify(dest)
    assert done.returncode == 0, done.stderr


def test_an_adapter_version_is_signed_over_its_files_under_its_base(env):
    registry, keys = stores(env)
    adapter = version_record(
        "org/lora",
        "v1",
        kind="adapter",
        rank=8,
        base_repo_id=LLAMA,
        base_suffix="v1",
        base_hf_sha="0" * 40,
        files={
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in ADAPTER_FILES.items()
        },
    )
    prefix, _ = adapter.location
    for name, data in ADAPTER_FILES.items():
        registry.store.create(f"{prefix}/{name}", data)
    registry.publish(sign_record(registry.store, keys, adapter, recorded_sha256(adapter)))
    record = registry.version("org/lora", "v1")

    assert signing.verify_signature(registry, keys, record) is None
    store_path(env, f"{prefix}/adapter_config.json").write_bytes(b'{"r": 16}')
    assert signing.verify_signature(registry, keys, record) == (
        "signature: does not match the version as stored "
        "(adapter_config.json changed since signing)"
    )
