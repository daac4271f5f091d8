"""`modelpub gc`: files of publishes that never finished are found and removed, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dagster_project import cli
from resources import gc
from resources.registry import Registry, artifact_prefix
from resources.store import LocalStore, open_store

REPO = "org/model"
RUNS = {"failed-run": "finished", "live-run": "running"}  # anything else: unknown


def _upload(registry: Registry, suffix: str, run_id: str | None) -> None:
    if run_id is not None:
        assert registry.reserve_suffix(REPO, run_id) == suffix
    prefix = artifact_prefix(REPO, suffix)
    registry.store.create(f"{prefix}/model.tensors", b"weights")
    registry.store.create(f"{prefix}/config.json", b"{}")


def _start_unfinished_upload(store, key: str) -> None:
    """A multipart upload with one part and no completion: what a killed writer leaves."""
    full = store._full(key)
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=full)
    store.client.upload_part(
        Bucket=store.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )


@pytest.fixture
def registry(s3_env) -> Registry:
    """v1: its run failed; v2: its run is running; v3: its run is unknown here;
    v4: published; v9: files that no run reserved."""
    registry = Registry(open_store(s3_env.settings.store))
    _upload(registry, "v1", "failed-run")
    registry.store.create(f"validation/{REPO}/v1/failed-run.json", b"{}")
    _start_unfinished_upload(registry.store, f"{artifact_prefix(REPO, 'v1')}/big.tensors")
    _upload(registry, "v2", "live-run")
    _upload(registry, "v3", "elsewhere-run")
    _upload(registry, "v4", "done-run")
    registry.publish({"repo_id": REPO, "suffix": "v4"})
    _upload(registry, "v9", None)
    return registry


@pytest.mark.s3
def test_gc_finds_only_what_no_run_will_finish_and_removes_it(registry):
    orphans = gc.find_orphans(registry, RUNS.get)
    assert [o.suffix for o in orphans] == ["v1", "v9"]
    v1 = orphans[0]
    assert "failed-run ended" in v1.why
    assert v1.keys == [
        f"vllm/{REPO}/v1/config.json",
        f"vllm/{REPO}/v1/model.tensors",
        f"validation/{REPO}/v1/failed-run.json",
    ]
    assert v1.unfinished == [f"vllm/{REPO}/v1/big.tensors"]

    # A day later, runs still marked running or unknown here count as abandoned too.
    later = datetime.now(UTC) + timedelta(days=2)
    assert [o.suffix for o in gc.find_orphans(registry, RUNS.get, now=later)] == [
        "v1",
        "v2",
        "v3",
        "v9",
    ]

    for orphan in orphans:
        assert gc.remove(registry, orphan)
    assert gc.find_orphans(registry, RUNS.get) == []
    assert registry.store.list(artifact_prefix(REPO, "v1")) == []
    assert registry.store.unfinished_uploads(artifact_prefix(REPO, "v1")) == []
    assert registry.store.list(artifact_prefix(REPO, "v4")) != []  # published: untouched
    assert registry.reservation(REPO, "v1")["run_id"] == "failed-run"  # never reused
    assert registry.reserve_suffix(REPO, "next-run") == "v5"


@pytest.mark.s3
def test_gc_command_reports_then_deletes(registry, capsys):
    # These runs are not in this test's Dagster instance: only age makes them abandoned.
    assert cli.main(["gc"]) == 0
    assert "orphaned: org/model@v9 (no run reserved this suffix)" in capsys.readouterr().out

    assert cli.main(["gc", "--older-than", "0"]) == 0
    report = capsys.readouterr().out
    for suffix in ("v1", "v2", "v3", "v9"):
        assert f"orphaned: {REPO}@{suffix}" in report
    assert "v4" not in report
    assert "modelpub gc --delete" in report

    assert cli.main(["gc", "--older-than", "0", "--delete"]) == 0
    assert "removed: org/model@v1" in capsys.readouterr().out
    assert cli.main(["gc", "--older-than", "0"]) == 0
    assert capsys.readouterr().out.strip() == "nothing to clean up"


def test_local_store_reports_staging_files_of_a_dead_writer(tmp_path):
    store = LocalStore(tmp_path)
    store.create("vllm/org/model/v1/config.json", b"{}")
    (tmp_path / "vllm/org/model/v1/.model.tensors.k2j4h1").write_bytes(b"partial")
    (tmp_path / "vllm/org/model/v1/.config.json.lock").touch()

    assert store.unfinished_uploads("vllm/org/model/v1") == [
        "vllm/org/model/v1/.model.tensors.k2j4h1"
    ]
    store.abort_unfinished_uploads("vllm/org/model/v1")
    assert store.unfinished_uploads("vllm/org/model/v1") == []
    assert store.list("vllm/org/model/v1") == ["vllm/org/model/v1/config.json"]
