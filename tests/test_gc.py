"""`modelpub gc`: files of publishes that never finished are found and removed, nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import pytest

from dagster_project import cli
from resources.catalog import CatalogError, load_catalog
from resources.layout import adapter_prefix, model_prefix, registry_key
from resources.registry import gc
from resources.registry.records import Worker
from resources.registry.registry import Registry
from resources.storage import open_store
from resources.storage.keys import open_key_store
from resources.storage.store import LocalStore
from tests.records import version_record

REPO = "org/model"
RUNS = {"failed-run": "finished", "live-run": "running"}  # anything else: unknown


def _upload(registry: Registry, suffix: str, run_id: str | None, repo: str = REPO) -> None:
    if run_id is not None:
        assert registry.reserve_suffix(repo, run_id) == suffix
    prefix = model_prefix(repo, suffix)
    registry.store.create(f"{prefix}/model.tensors", b"weights")
    registry.store.create(f"{prefix}/config.json", b"{}")


def _publish(registry: Registry, repo: str, suffix: str, run_id: str, **record) -> None:
    _upload(registry, suffix, run_id, repo)
    registry.publish(version_record(repo, suffix, **record))


def _start_unfinished_upload(store, key: str) -> None:
    """A multipart upload with one part and no completion: what a killed writer leaves."""
    full = store._full(key)
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=full)
    store.client.upload_part(
        Bucket=store.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


@pytest.fixture
def s3_registry(s3_env) -> Registry:
    """v1: its run failed (with a key); v2: its run is running; v3: its run is unknown
    here; v4: published; v9: files that no run reserved."""
    settings = s3_env.settings
    registry = Registry(open_store(settings.store, settings.store_s3))
    keys = open_key_store(settings.keys, settings.store, settings.keys_s3)
    assert registry.reserve_suffix(REPO, "failed-run", key_id=lambda s: f"org__model/{s}") == "v1"
    keys.create("org__model/v1")
    _upload(registry, "v1", None)
    registry.store.create(f"validation/{REPO}/v1/failed-run.json", b"{}")
    _start_unfinished_upload(registry.store, f"{model_prefix(REPO, 'v1')}/big.tensors")
    _upload(registry, "v2", "live-run")
    _upload(registry, "v3", "elsewhere-run")
    _publish(registry, REPO, "v4", "done-run")
    _upload(registry, "v9", None)
    return registry


@pytest.mark.s3
def test_gc_finds_only_what_no_run_will_finish_and_removes_it(s3_registry, s3_env):
    registry, settings = s3_registry, s3_env.settings
    keys = open_key_store(settings.keys, settings.store, settings.keys_s3)
    found = gc.find_orphans(registry, keys, RUNS.get)
    assert [o.suffix for o in found.orphans] == ["v1"]
    assert found.unclaimed == [f"vllm/{REPO}/v9/config.json", f"vllm/{REPO}/v9/model.tensors"]
    v1 = found.orphans[0]
    assert "failed-run ended" in v1.why
    assert v1.objects == [
        f"vllm/{REPO}/v1/config.json",
        f"vllm/{REPO}/v1/model.tensors",
        f"validation/{REPO}/v1/failed-run.json",
    ]
    assert v1.unfinished == [f"vllm/{REPO}/v1/big.tensors"]
    assert v1.key_id == "org__model/v1"

    # A day later, runs still marked running or unknown here count as abandoned too.
    later = datetime.now(UTC) + timedelta(days=2)
    assert [o.suffix for o in gc.find_orphans(registry, keys, RUNS.get, now=later).orphans] == [
        "v1",
        "v2",
        "v3",
    ]

    assert gc.remove(registry, keys, v1)
    assert gc.find_orphans(registry, keys, RUNS.get).orphans == []
    assert registry.store.list(model_prefix(REPO, "v1")) == []
    assert registry.store.unfinished_uploads(model_prefix(REPO, "v1")) == []
    assert not keys.exists("org__model/v1")
    assert registry.store.list(model_prefix(REPO, "v4")) != []  # published: untouched
    assert registry.store.list(model_prefix(REPO, "v9")) != []  # unclaimed: left alone
    assert registry.reservation(REPO, "v1").run_id == "failed-run"  # never reused
    assert registry.reserve_suffix(REPO, "next-run") == "v5"


@pytest.mark.s3
def test_gc_command_reports_then_deletes(s3_registry, capsys):
    # These runs are not in this test's Dagster instance: only age makes them abandoned.
    assert cli.main(["gc"]) == 0
    report = capsys.readouterr().out
    assert "orphaned" not in report
    assert "unclaimed: 2 files that no reservation or record names" in report

    assert cli.main(["gc", "--older-than", "0"]) == 0
    report = capsys.readouterr().out
    for suffix in ("v1", "v2", "v3"):
        assert f"orphaned: {REPO}@{suffix}" in report
    assert "org/model@v4" not in report and "org/model@v9" not in report
    assert "key org__model/v1" in report
    assert "modelpub gc --delete" in report

    assert cli.main(["gc", "--older-than", "0", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [o["reference"] for o in found["orphans"]] == [f"{REPO}@v{n}" for n in (1, 2, 3)]
    assert {o["status"] for o in found["orphans"]} == {"orphaned"} and len(found["unclaimed"]) == 2

    assert cli.main(["gc", "--older-than", "0", "--delete"]) == 0
    assert "removed: org/model@v1" in capsys.readouterr().out
    assert cli.main(["gc", "--older-than", "0"]) == 0
    report = capsys.readouterr().out
    assert "orphaned" not in report and "unclaimed: 2 files" in report


@pytest.fixture
def local(tmp_path):
    store = LocalStore(tmp_path / "store")
    return Registry(store), open_key_store(str(tmp_path / "keys"), str(tmp_path / "store"))


def test_repo_ids_that_look_like_suffixes_are_never_collected(local):
    """`vllm/acme/v2/v1/` is acme/v2 at v1, not `acme` at v2: the bug that deleted it."""
    registry, keys = local
    for repo in ("acme/v2", "v1/v2", "v2/v1"):
        _publish(registry, repo, "v1", "done-run")
    assert registry.reserve_suffix("acme/v2", "failed-run") == "v2"  # a failure beside them
    registry.store.create(f"{model_prefix('acme/v2', 'v2')}/model.tensors", b"partial")
    before = {k: registry.store.get_bytes(k) for k in registry.store.list("vllm")}

    found = gc.find_orphans(registry, keys, RUNS.get, older_than=timedelta(0))
    assert [o.reference for o in found.orphans] == ["acme/v2@v2"]
    assert found.unclaimed == []
    assert gc.remove(registry, keys, found.orphans[0])
    after = set(registry.store.list("vllm"))
    assert after == set(before) - {"vllm/acme/v2/v2/model.tensors"}
    assert sorted(registry.repos()) == ["acme/v2", "v1/v2", "v2/v1"]


def test_abandoned_adapter_upload_under_a_published_base_is_found(local):
    registry, keys = local
    _publish(registry, "org/base", "v1", "base-run")
    published = adapter_prefix("org/base", "v1", "org/lora", "v1")  # a published adapter...
    assert registry.reserve_suffix("org/lora", "ok-run", prefix=lambda s: published) == "v1"
    registry.store.create(f"{published}/adapter_model.tensors", b"lora")
    registry.publish(
        version_record(
            "org/lora",
            "v1",
            kind="adapter",
            rank=8,
            base_repo_id="org/base",
            base_suffix="v1",
            base_hf_sha="0" * 40,
        )
    )
    # ... and one whose run died after uploading, under the same published base.
    prefix = adapter_prefix("org/base", "v1", "org/lora", "v2")
    assert registry.reserve_suffix("org/lora", "failed-run", prefix=lambda s: prefix) == "v2"
    registry.store.create(f"{prefix}/adapter_model.tensors", b"lora")
    registry.store.create(f"{prefix}/adapter_config.json", b"{}")

    found = gc.find_orphans(registry, keys, RUNS.get, older_than=timedelta(0))
    assert [(o.reference, o.objects) for o in found.orphans] == [
        (
            "org/lora@v2",
            [f"{prefix}/adapter_config.json", f"{prefix}/adapter_model.tensors"],
        )
    ]
    assert gc.remove(registry, keys, found.orphans[0])
    assert registry.store.list(prefix) == []
    assert registry.store.list(model_prefix("org/base", "v1")) == [
        f"{published}/adapter_model.tensors",
        "vllm/org/base/v1/config.json",
        "vllm/org/base/v1/model.tensors",
    ]


def test_reservations_of_the_previous_shape_are_read_and_judged(local):
    """A reservation written before reservations named their prefix (schema 1) is still
    read; an adapter's is found under any published base."""
    registry, keys = local
    _publish(registry, "org/base", "v1", "base-run")
    legacy = {"suffix": "v1", "run_id": "failed-run", "reserved_at": "2026-11-01T00:00:00+00:00"}
    registry.store.create(
        registry_key("org/lora", "reservations", "v1"), json.dumps(legacy).encode()
    )
    prefix = adapter_prefix("org/base", "v1", "org/lora", "v1")
    registry.store.create(f"{prefix}/adapter_model.tensors", b"lora")

    reservation = registry.reservation("org/lora", "v1")
    assert (reservation.schema_, reservation.prefix, reservation.worker) == (1, None, None)
    found = gc.find_orphans(registry, keys, RUNS.get)
    assert [(o.reference, o.objects) for o in found.orphans] == [
        ("org/lora@v1", [f"{prefix}/adapter_model.tensors"])
    ]


def test_a_dead_worker_is_abandoned_at_once_and_a_live_one_is_not(local):
    """The Dagster run of a killed publisher stays "running"; its process is what tells."""
    registry, keys = local
    for suffix, run_id, pid in (("v1", "live-run", None), ("v2", "dead-run", _dead_pid())):
        worker = Worker.of(pid or os.getpid())
        assert registry.reserve_suffix(REPO, run_id, worker=worker) == suffix
        registry.store.create(f"{model_prefix(REPO, suffix)}/model.tensors", b"partial")

    found = gc.find_orphans(registry, keys, lambda run_id: "running")
    assert [o.suffix for o in found.orphans] == ["v2"]
    assert "is gone" in found.orphans[0].why


def test_a_version_published_meanwhile_is_kept(local):
    registry, keys = local
    assert registry.reserve_suffix(REPO, "slow-run", key_id=lambda s: f"org__model/{s}") == "v1"
    keys.create("org__model/v1")
    _upload(registry, "v1", None)
    orphan = gc.find_orphans(registry, keys, RUNS.get, older_than=timedelta(0)).orphans[0]

    registry.publish(version_record(REPO, "v1", key_id="org__model/v1"))
    assert not gc.remove(registry, keys, orphan)
    assert registry.store.list(model_prefix(REPO, "v1")) != []
    assert keys.exists("org__model/v1")


def test_catalog_refuses_single_segment_repo_ids(tmp_path):
    """The layout relies on `org/name`: `acme` at v2 would be `acme/v2`'s directory."""
    path = tmp_path / "catalog.yaml"
    path.write_text("hubs: {h: {kind: huggingface}}\nmodels: [{repo_id: acme, hub: h}]\n")
    with pytest.raises(CatalogError, match="'acme' is not a Hugging Face repo id like 'org/name'"):
        load_catalog(str(path))


def test_local_store_reports_staging_files_of_a_dead_writer(tmp_path):
    store = LocalStore(tmp_path)
    store.create("vllm/org/model/v1/config.json", b"{}")
    (tmp_path / "vllm/org/model/v1/.model.tensors.k2j4h1").write_bytes(b"partial")
    (tmp_path / "vllm/org/model/v1/.config.json.lock").touch()

    assert store.unfinished_uploads("vllm/org/model/v1") == [
        "vllm/org/model/v1/.model.tensors.k2j4h1"
    ]
    store.abort_upload("vllm/org/model/v1/.model.tensors.k2j4h1")
    assert store.unfinished_uploads("vllm/org/model/v1") == []
    assert store.list("vllm/org/model/v1") == ["vllm/org/model/v1/config.json"]


def test_gc_reports_and_removes_the_staging_directory_of_a_killed_local_publish(env, capsys):
    """A local publish writes the tensors into `.staging-<random>/` beside their place and
    renames them; killed before the rename, that directory is what it leaves."""
    registry = Registry(LocalStore(env.settings.store))
    assert registry.reserve_suffix(REPO, "killed-run") == "v1"
    leftover = f"{model_prefix(REPO, 'v1')}/.staging-q8x1z/model.tensors"
    registry.store.path(leftover).parent.mkdir(parents=True)
    registry.store.path(leftover).write_bytes(b"partial")
    assert registry.store.list(model_prefix(REPO, "v1")) == []  # never a version's file

    assert cli.main(["gc", "--older-than", "0"]) == 0
    report = capsys.readouterr().out
    assert f"orphaned: {REPO}@v1" in report and "0 files, 1 unfinished uploads" in report
    assert registry.store.uri(leftover) in report
    assert cli.main(["gc", "--older-than", "0", "--delete"]) == 0
    assert f"removed: {REPO}@v1" in capsys.readouterr().out
    assert not registry.store.path(leftover).parent.exists()


class GatedStore(LocalStore):
    """A local store that stops one thread before its `pause_at`-th store call until the
    test lets it go: a barrier, so each interleaving of two actors is run exactly."""

    def __init__(self, root):
        super().__init__(root)
        self.gated: int | None = None  # the thread id to stop
        self.pause_at = -1
        self.calls = 0
        self.paused, self.resume = threading.Event(), threading.Event()
        self._local = threading.local()

    @property
    def inside(self) -> bool:
        return getattr(self._local, "inside", False)

    @inside.setter
    def inside(self, value: bool) -> None:
        self._local.inside = value

    def _gate(self) -> None:
        if threading.get_ident() != self.gated:
            return
        if self.calls == self.pause_at:
            self.paused.set()
            assert self.resume.wait(30)
        self.calls += 1


def _gated(name: str):
    method = getattr(LocalStore, name)

    def call(self, *args, **kwargs):
        outermost = not self.inside
        if outermost:  # a call the store makes of itself (under its own lock) is not gated
            self._gate()
        self.inside = True
        try:
            return method(self, *args, **kwargs)
        finally:
            self.inside = not outermost

    return call


for _name in (
    "read_chunks",
    "open_read",
    "exists",
    "list",
    "delete",
    "create",
    "read_versioned",
    "replace",
    "put_file",
    "get_bytes",
    "abort_upload",
    "unfinished_uploads",
):
    setattr(GatedStore, _name, _gated(_name))


def _interleave(first, second, store: GatedStore, pause_at: int) -> dict[str, BaseException]:
    """Run `first` in a thread until its `pause_at`-th store call, then `second` to its
    end, then the rest of `first`; the exceptions each raised, by name."""
    errors: dict[str, BaseException] = {}

    def run(name, action):
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - what each actor ended with is the result
            errors[name] = exc

    started = threading.Event()

    def gated_first():
        store.gated = threading.get_ident()
        started.set()
        run("first", first)

    thread = threading.Thread(target=gated_first)
    store.pause_at, store.calls = pause_at, 0
    store.paused.clear()
    store.resume.clear()
    thread.start()
    started.wait()
    while thread.is_alive() and not store.paused.wait(0.01):
        pass  # `first` may end before its pause_at-th call
    run("second", second)
    store.resume.set()
    thread.join(30)
    assert not thread.is_alive()
    return errors


@pytest.mark.parametrize("gc_first", [True, False], ids=["gc-paused", "publish-paused"])
@pytest.mark.parametrize("pause_at", range(12))
def test_gc_and_a_re_execution_interleaved_publish_whole_or_not_at_all(
    tmp_path, gc_first, pause_at
):
    """A run failed after its checks; gc judges its reservation abandoned while a
    re-execution of that run publishes it. At every interleaving of their store calls,
    either the version is published whole (files, key, signature) and gc deleted nothing,
    or gc removed it and the re-execution refused: never a record without files or key."""
    from resources.registry.publish import PublishPlan, PublishRefused, publish_staged
    from resources.registry.records import ModelSettings, RoundTripProof, StagedArtifact
    from resources.registry.signing import verify_signature

    store = GatedStore(tmp_path / "store")
    registry = Registry(store)
    keys = open_key_store(str(tmp_path / "keys"), str(tmp_path / "store"))
    suffix = registry.reserve_suffix(REPO, "failed-run", key_id=lambda s: f"org__model/{s}")
    keys.create(f"org__model/{suffix}")
    _upload(registry, suffix, None)
    prefix = model_prefix(REPO, suffix)
    files = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for n, d in (("model.tensors", b"weights"), ("config.json", b"{}"))
    }
    staged = StagedArtifact(
        repo_id=REPO,
        suffix=suffix,
        sha="a" * 40,
        prefix=prefix,
        tensors_file="model.tensors",
        key_id=f"org__model/{suffix}",
        files=files,
        reused=False,
        settings=ModelSettings(dtype="float16", encrypted=True),
    )
    proof = RoundTripProof(passed=True, sha256={n: f["sha256"] for n, f in files.items()})
    plan = PublishPlan(run_id="re-execution", catalog_key="org__model", hf_ref="main")
    orphan = gc.find_orphans(registry, keys, RUNS.get).orphans[0]  # the failed run: over

    def collect():
        gc.remove(registry, keys, orphan)

    def republish():
        publish_staged(registry, store, keys, staged, plan, proof)

    errors = (
        _interleave(collect, republish, store, pause_at)
        if gc_first
        else _interleave(republish, collect, store, pause_at)
    )
    publish_error = errors.get("second" if gc_first else "first")
    assert not [e for e in errors.values() if not isinstance(e, PublishRefused)], errors
    if registry.is_published(REPO, suffix):
        record = registry.version(REPO, suffix)
        assert publish_error is None
        assert sorted(store.list(prefix)) == sorted(f"{prefix}/{n}" for n in files)
        assert keys.exists(record.key_id)
        assert verify_signature(registry, keys, record) is None
    else:
        assert isinstance(publish_error, PublishRefused)
        assert re.search("claimed it as abandoned|no longer in the store", str(publish_error))
        assert store.list(prefix) == [] and not keys.exists(f"org__model/{suffix}")
