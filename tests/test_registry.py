"""The registry on a local store: records are immutable, aliases move by compare-and-swap."""

import threading

import pytest

from resources.registry.records import ModelSettings, VersionRecord
from resources.registry.registry import Registry, RegistryError
from resources.storage.store import LocalStore
from tests.records import version_record


def record(suffix: str, sha: str = "a" * 40, **extra) -> VersionRecord:
    return version_record("org/m", suffix, hf_sha=sha, encrypted=True, **extra)


def lost_creates(registry: Registry, monkeypatch) -> list[str]:
    """The keys of every create-once write that found its key taken, from now on."""
    lost: list[str] = []
    create = registry.store.create

    def counting_create(key, data):
        created = create(key, data)
        if not created:
            lost.append(key)
        return created

    monkeypatch.setattr(registry.store, "create", counting_create)
    return lost


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(LocalStore(tmp_path / "store"))


def test_record_is_created_once_and_never_changed(registry, tmp_path):
    registry.publish(record("v1"))
    path = tmp_path / "store/registry/org/m/versions/v1.json"
    before = path.read_bytes()
    with pytest.raises(RegistryError, match="already published; versions are immutable"):
        registry.publish(record("v1", sha="b" * 40))
    assert path.read_bytes() == before
    assert registry.version("org/m", "v1").hf_sha == "a" * 40


def test_suffixes_are_allocated_in_order_and_skip_reservations(registry):
    assert registry.reserve_suffix("org/m", "run-1") == "v1"
    assert registry.reserve_suffix("org/m", "run-2") == "v2"  # v1 reserved, never published
    registry.publish(record("v2"))
    assert registry.reserve_suffix("org/m", "run-3") == "v3"
    assert registry.reservation("org/m", "v1").run_id == "run-1"


def test_concurrent_reservations_get_distinct_suffixes(registry, monkeypatch):
    """Every thread first reads the same taken suffixes (a barrier after the listing), so
    all 16 race for v1: the create-once write is what keeps them apart."""
    got: list[str] = []
    barrier = threading.Barrier(16)
    listed = registry._suffixes

    def listing_then_wait(repo_id, kind):
        found = listed(repo_id, kind)
        if kind == "versions":
            barrier.wait(timeout=30)
        return found

    monkeypatch.setattr(registry, "_suffixes", listing_then_wait)
    lost = lost_creates(registry, monkeypatch)
    threads = [
        threading.Thread(
            target=lambda i=i: got.append(registry.reserve_suffix("org/m", f"run-{i}"))
        )
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=lambda s: int(s[1:])) == [f"v{i}" for i in range(1, 17)]
    assert len(lost) >= 15  # the collisions happened: all but one lost the race for v1


def test_alias_moves_forward_and_resolves(registry):
    for n in (1, 2, 3):
        registry.publish(record(f"v{n}", sha=str(n) * 40))
    registry.move_alias("org/m", "latest", "v2")
    registry.move_alias("org/m", "latest", "v1")  # latest never moves backwards
    assert registry.resolve("org/m").suffix == "v2"
    registry.move_alias("org/m", "stable", "v3")
    registry.move_alias("org/m", "stable", "v1")  # other aliases move anywhere
    assert registry.resolve("org/m@stable").suffix == "v1"
    assert registry.resolve("org/m@v3").hf_sha == "3" * 40
    assert registry.aliases("org/m") == {"latest": "v2", "stable": "v1"}


def test_concurrent_alias_moves_lose_no_update(registry, monkeypatch):
    """All 12 movers read the alias before any writes (a barrier after the first read),
    so their compare-and-swap writes collide: the losers retry, and none is lost."""
    for n in range(1, 13):
        registry.publish(record(f"v{n}"))
    barrier, first_read = threading.Barrier(12), threading.local()
    read = registry.store.read_versioned

    def read_then_wait(key):
        found = read(key)
        if not getattr(first_read, "done", False):
            first_read.done = True
            barrier.wait(timeout=30)
        return found

    monkeypatch.setattr(registry.store, "read_versioned", read_then_wait)
    lost = lost_creates(registry, monkeypatch)
    threads = [
        threading.Thread(target=registry.move_alias, args=("org/m", "latest", f"v{n}"))
        for n in range(1, 13)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.resolve("org/m@latest").suffix == "v12"
    assert len(lost) == 11  # every mover but one lost the race to create the alias


def test_unknown_references_explain_themselves(registry):
    registry.publish(record("v1"))
    with pytest.raises(RegistryError, match="org/m@v9 is not published"):
        registry.resolve("org/m@v9")
    with pytest.raises(RegistryError, match=r"no alias 'stable' \(aliases: none\)"):
        registry.resolve("org/m@stable")
    with pytest.raises(RegistryError, match="only published versions|is not published"):
        registry.move_alias("org/m", "latest", "v7")


def test_find_by_sha_matches_settings(registry):
    registry.publish(record("v1", sha="c" * 40))
    same = ModelSettings(dtype="float16", encrypted=True)
    assert registry.find_by_sha("org/m", "c" * 40, same).suffix == "v1"
    other = ModelSettings(dtype="bfloat16", encrypted=True)
    assert registry.find_by_sha("org/m", "c" * 40, other) is None
    sharded = ModelSettings(dtype="float16", encrypted=True, tensor_parallel_size=2)
    assert registry.find_by_sha("org/m", "c" * 40, sharded) is None
