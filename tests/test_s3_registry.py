"""The registry on S3 under concurrency: conditional writes are all that keeps it straight."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from resources.layout import model_prefix
from resources.registry.registry import Registry, suffix_number
from resources.storage import open_store
from tests.records import version_record

pytestmark = pytest.mark.s3

REPO = "org/raced-model"
PUBLISHERS = 8


def test_racing_publishers_get_distinct_suffixes_and_a_consistent_alias(s3_env):
    """Eight publishers of one repo start at the same instant, each with its own client
    (as separate machines would): every one gets its own suffix, every version is
    published, `latest` ends on the newest and `stable` on one of them."""
    uri, s3 = s3_env.settings.store, s3_env.settings.store_s3
    start = threading.Barrier(PUBLISHERS)

    def publish(i: int) -> str:
        registry = Registry(open_store(uri, s3))
        start.wait()
        suffix = registry.reserve_suffix(REPO, run_id=f"run-{i}")
        registry.store.create(f"{model_prefix(REPO, suffix)}/model.tensors", f"{i}".encode())
        registry.publish(version_record(REPO, suffix, dagster_run_id=f"run-{i}"))
        registry.move_alias(REPO, "latest", suffix)
        registry.move_alias(REPO, "stable", suffix)
        return suffix

    with ThreadPoolExecutor(PUBLISHERS) as pool:
        suffixes = list(pool.map(publish, range(PUBLISHERS)))

    assert sorted(suffixes, key=suffix_number) == [f"v{n}" for n in range(1, PUBLISHERS + 1)]
    registry = Registry(open_store(uri, s3))
    for record in registry.versions(REPO):
        # each record is its own run's, and that run holds the suffix's reservation
        run = record.dagster_run_id
        assert registry.reservation(REPO, record.suffix).run_id == run
        assert suffixes[int(run.removeprefix("run-"))] == record.suffix
    aliases = registry.aliases(REPO)
    assert aliases["latest"] == f"v{PUBLISHERS}"
    assert aliases["stable"] in suffixes
    assert registry.resolve(f"{REPO}@stable").suffix == aliases["stable"]


def test_compare_and_swap_loses_no_update(s3_env):
    """Read-modify-write through `replace` from racing clients: no increment is lost."""
    uri, s3 = s3_env.settings.store, s3_env.settings.store_s3
    open_store(uri, s3).create("counter", b"0")
    start = threading.Barrier(PUBLISHERS)

    def bump(_: int) -> int:
        store, conflicts = open_store(uri, s3), 0
        start.wait()
        for _ in range(5):
            while True:
                data, tag = store.read_versioned("counter")
                if store.replace("counter", str(int(data) + 1).encode(), tag):
                    break
                conflicts += 1
        return conflicts

    with ThreadPoolExecutor(PUBLISHERS) as pool:
        conflicts = sum(pool.map(bump, range(PUBLISHERS)))
    assert int(open_store(uri, s3).get_bytes("counter")) == PUBLISHERS * 5
    assert conflicts > 0  # the clients really did collide
