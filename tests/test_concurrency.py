"""Two runs of one entry in flight at once (a sensor, schedules and people guarantee it):
each step reads its own run's state, so both succeed and neither touches the other's.

The interleavings are fixed by gates (tests/gates.py), not by timing: two publishes meet
right after reserving their suffixes, so each is in flight while the other is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunsFilter

from assets.state import PARTITION_TAG, SHA_TAG, VERIFY_TAG
from dagster_project.cli import publish
from dagster_project.definitions import build_definitions
from resources.registry.registry import Registry
from resources.storage import LocalStore
from resources.validation.roundtrip import RoundTrip
from tests.conftest import LLAMA
from tests.gates import Gate

pytestmark = pytest.mark.vllm

KEY = LLAMA.replace("/", "__")
RESERVED = "resources.registry.registry:Registry.reserve_suffix"


def start_publish(gate: Gate, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dagster_project.cli", "publish", LLAMA, *flags],
        env=gate.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(worker: subprocess.Popen) -> None:
    output = worker.communicate(timeout=600)[0]
    assert worker.returncode == 0, output[-3000:]


def assert_overlapped(instance: DagsterInstance, run_ids: list[str]) -> None:
    """The runs really were in flight together: each started before the other ended."""
    records = instance.get_run_records(RunsFilter(run_ids=run_ids))
    assert len(records) == len(run_ids)
    latest_start = max(r.start_time for r in records)
    earliest_end = min(r.end_time for r in records)
    assert latest_start < earliest_end, "the runs did not overlap"


def test_two_forced_publishes_of_one_entry_both_publish_their_own_suffix(env, instance):
    both_reserved = Gate(str(env.root / "gate"), RESERVED, parties=2)
    workers = [start_publish(both_reserved, "--force"), start_publish(both_reserved, "--force")]
    for worker in workers:
        finish(worker)

    registry = Registry(LocalStore(env.settings.store))
    records = registry.versions(LLAMA)
    assert [r.suffix for r in records] == ["v1", "v2"]
    runs = [r.dagster_run_id for r in records]
    assert len(set(runs)) == 2
    assert_overlapped(instance, runs)
    for record in records:  # each validated exactly the suffix it wrote, in its own run
        assert record.validation_report.endswith(
            f"validation/{LLAMA}/{record.suffix}/{record.dagster_run_id}.json"
        )
        assert registry.reservation(LLAMA, record.suffix).run_id == record.dagster_run_id
    assert registry.aliases(LLAMA) == {"latest": "v2"}


def test_two_unforced_publishes_of_one_sha_make_one_version(env, instance):
    """The documented rule: the lower suffix goes on, the other waits and reuses it."""
    both_reserved = Gate(str(env.root / "gate"), RESERVED, parties=2)
    workers = [start_publish(both_reserved), start_publish(both_reserved)]
    for worker in workers:
        finish(worker)

    registry = Registry(LocalStore(env.settings.store))
    assert [r.suffix for r in registry.versions(LLAMA)] == ["v1"]
    assert len(both_reserved.arrived()) == 2  # so the waiting path was the one taken
    waiter = registry.reservation(LLAMA, "v2")
    assert waiter is not None and not registry.is_published(LLAMA, "v2")
    assert not (env.root / "store" / "vllm" / LLAMA / "v2").exists()
    runs = instance.get_run_records(RunsFilter(job_name="publish_model"))
    assert len(runs) == 2 and all(r.dagster_run.is_success for r in runs)
    assert_overlapped(instance, [r.dagster_run.run_id for r in runs])


def test_a_publish_overlapping_a_reverify_of_the_same_entry(env, instance, monkeypatch):
    v1 = publish(env.settings, LLAMA)
    reserved = Gate(str(env.root / "gate"), RESERVED)
    worker = start_publish(reserved, "--force")
    reserved.wait_arrived()
    check = RoundTrip.run

    def open_then_check(self, generate):
        reserved.open()  # the publish goes on while the re-verify checks
        return check(self, generate)

    monkeypatch.setattr(RoundTrip, "run", open_then_check)
    defs = build_definitions(env.settings)
    reverify = defs.resolve_job_def("reverify_model").execute_in_process(
        instance=instance,
        tags={PARTITION_TAG: KEY, VERIFY_TAG: "v1", SHA_TAG: v1.hf_sha},
        raise_on_error=False,
    )
    finish(worker)

    assert reverify.success and Path(reserved.root, "open").exists()
    evaluations = reverify.get_asset_check_evaluations()
    assert len(evaluations) == 3 and all(e.passed for e in evaluations)
    assert {e.metadata["version"].value for e in evaluations} == {f"{LLAMA}@v1"}
    registry = Registry(LocalStore(env.settings.store))
    v2 = registry.version(LLAMA, "v2")
    assert registry.version(LLAMA, "v1") == v1  # the re-verify changed nothing
    assert_overlapped(instance, [reverify.run_id, v2.dagster_run_id])
    assert registry.aliases(LLAMA) == {"latest": "v2"}
