"""Faults during a publish: each ends in a clear error, nothing visible, and a rerun works."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project.cli import PublishFailed, main, publish
from resources.registry.registry import Registry, RegistryError
from resources.storage.store import LocalStore
from tests.conftest import LLAMA
from tests.gates import Gate
from tests.published import stores
from tests.real_parts import tmpfs

pytestmark = pytest.mark.vllm


def versions(env) -> list[str]:
    return [r.suffix for r in Registry(LocalStore(env.settings.store)).versions(LLAMA)]


@pytest.fixture
def tiny_staging_disk(s3_env):
    """A 256 KiB tmpfs as the staging directory: too small for even one part of a streamed
    upload (a local store does not stage at all)."""
    with tmpfs(Path(s3_env.settings.staging), "256k") as staging:
        yield staging


def test_full_staging_disk_fails_clearly_and_a_rerun_publishes(s3_env, tiny_staging_disk):
    registry, _ = stores(s3_env)
    with pytest.raises(PublishFailed, match="no space left in the staging directory .* spool"):
        publish(s3_env.settings, LLAMA)
    assert registry.versions(LLAMA) == []
    assert not registry.store.list("vllm/") and not registry.store.unfinished_uploads("vllm/")
    subprocess.run(["umount", "-l", str(tiny_staging_disk)], check=True)
    assert publish(s3_env.settings, LLAMA).suffix == "v2"  # v1 stays reserved by the failed run
    assert [r.suffix for r in registry.versions(LLAMA)] == ["v2"]


def test_killed_publish_leaves_nothing_visible_and_a_rerun_publishes(env, capsys):
    # the publish stops (tests/gates.py) once the round trip has checked the uploaded tensors
    checked = Gate(str(env.root / "gate"), "resources.validation.roundtrip:RoundTrip.check_tensors")
    cli = [sys.executable, "-m", "dagster_project.cli", "publish", LLAMA]
    worker = subprocess.Popen(
        cli,
        env=checked.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checked.wait_arrived()
    assert (Path(env.settings.store) / f"vllm/{LLAMA}/v1/model.tensors").exists()
    os.killpg(worker.pid, signal.SIGKILL)  # the worker, mid-validation
    worker.wait()
    assert versions(env) == []
    with pytest.raises(RegistryError, match="no alias 'latest'"):
        Registry(LocalStore(env.settings.store)).resolve(LLAMA)

    # Its Dagster run still says "running"; gc knows its process is gone, at once.
    capsys.readouterr()
    assert main(["gc"]) == 0
    report = capsys.readouterr().out
    assert f"orphaned: {LLAMA}@v1" in report, report
    assert f"(pid {worker.pid} on" in report and "is gone" in report
    record = publish(env.settings, LLAMA)
    assert record.suffix == "v2" and record.validation["passed"]
    assert Registry(LocalStore(env.settings.store)).resolve(LLAMA).suffix == "v2"
