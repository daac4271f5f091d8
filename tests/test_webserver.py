"""The operator's console: what `dagster-webserver` shows, read back through its GraphQL API."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from dagster import AssetSelection, DagsterRunStatus, materialize

from assets.publish_jobs import MODEL_JOB
from assets.state import PARTITION_TAG, VERIFY_TAG
from dagster_project.definitions import build_definitions
from dagster_project.demo import git
from resources.registry.registry import Registry
from resources.storage import LocalStore
from tests.conftest import LLAMA
from tests.processes import dagster_home, free_port, start, stop, wait_for
from tests.records import version_record

KEY = LLAMA.replace("/", "__")

GRAPH = """{
  assetNodes {
    assetKey { path }
    description groupName kinds isPartitioned
    dependencyKeys { path }
    owners { ... on TeamAssetOwner { team } }
    tags { key value }
    assetChecksOrError { ... on AssetChecks { checks { name blocking description } } }
  }
}"""

METADATA = """fragment Entries on MetadataEntry {
  label
  ... on TextMetadataEntry { text }
  ... on MarkdownMetadataEntry { mdStr }
  ... on PathMetadataEntry { path }
  ... on UrlMetadataEntry { url }
  ... on BoolMetadataEntry { boolValue }
}"""

LATEST = (
    """query Latest($key: AssetKeyInput!, $partition: String!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        partition runId metadataEntries { ...Entries }
      }
    }
  }
}
"""
    + METADATA
)

LAUNCH = """mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""

CHECKS = (
    """query Checks($key: AssetKeyInput!, $partition: String!) {
  assetCheckExecutions(
    assetKey: $key, checkName: "tensors_match", partition: $partition, limit: 5
  ) {
    status partition runId
    evaluation { success partition description metadataEntries { ...Entries } }
  }
}
"""
    + METADATA
)


def graphql(port: int, query: str, **variables) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert not body.get("errors"), body["errors"]
    return body["data"]


def entries(event: dict) -> dict[str, dict]:
    return {e["label"]: e for e in event["metadataEntries"]}


def try_graph(port: int) -> list | None:
    try:
        return graphql(port, GRAPH)["assetNodes"]
    except OSError:
        return None


def test_webserver_shows_asset_graph_latest_metadata_and_checks_per_partition(
    env, instance, tmp_path
):
    # Runs launched from the UI start at once (no daemon here to dequeue them).
    dagster_home(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    defs = build_definitions(env.settings)
    instance.add_dynamic_partitions("models", [KEY])
    written = materialize(
        [*defs.assets, *defs.asset_checks],
        selection=AssetSelection.assets(MODEL_JOB.fetch, MODEL_JOB.serialize).without_checks(),
        partition_key=KEY,
        instance=instance,
        resources=defs.resources,
    )
    assert written.success
    # The version as a publish would record it (a hand-written record from what the run
    # staged: publishing for real would add two vLLM engines to this test).
    staged = written.asset_materializations_for_node("tensorized_model")[0].metadata["staged"]
    staged = staged.value
    Registry(LocalStore(env.settings.store)).publish(
        version_record(
            staged["repo_id"],
            staged["suffix"],
            hf_sha=staged["sha"],
            key_id=staged["key_id"],
            files=staged["files"],
            **staged["settings"],
        )
    )
    # Bit rot in the store after publishing: the checks-only job must catch it (cheaply:
    # the tensor check fails before any vLLM engine starts).
    tensors = next(Path(env.settings.store).rglob("model.tensors"))
    data = bytearray(tensors.read_bytes())
    data[-64] ^= 0xFF
    tensors.write_bytes(bytes(data))

    port = free_port()
    web = start(
        ["dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        tmp_path / "webserver.log",
    )
    try:
        nodes = wait_for(lambda: try_graph(port), 180, "the asset graph over GraphQL", web)
        latest = graphql(port, LATEST, key={"path": ["model_snapshot"]}, partition=KEY)
        # What an operator does from the launchpad: re-verify one entry.
        launched = graphql(
            port,
            LAUNCH,
            params={
                "selector": {
                    "repositoryLocationName": "dagster_project.definitions",
                    "repositoryName": "__repository__",
                    "jobName": "reverify_model",
                },
                "executionMetadata": {
                    "tags": [
                        {"key": PARTITION_TAG, "value": KEY},
                        {"key": VERIFY_TAG, "value": staged["suffix"]},
                    ]
                },
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        run = wait_for(
            lambda: (r := instance.get_run_by_id(run_id)) and r.is_finished and r,
            180,
            "the re-verify run to finish",
            web,
        )
        checks = graphql(port, CHECKS, key={"path": ["tensorized_model"]}, partition=KEY)
    finally:
        stop(web)

    assert run.status == DagsterRunStatus.FAILURE  # a failed blocking check fails the run
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_key) >= {"model_snapshot", "tensorized_model", "published_version"}
    assert by_key["published_version"]["dependencyKeys"] == [{"path": ["tensorized_model"]}]
    for name, node in by_key.items():
        artifact = "adapter" if "adapter" in name else "model"
        assert node["description"] and node["isPartitioned"]
        assert node["owners"] == [{"team": "ml-platform"}]
        assert {"key": "modelpub/artifact", "value": artifact} in node["tags"]
    assert set(by_key["tensorized_model"]["kinds"]) == {"tensorizer", "pytorch"}
    roundtrip = by_key["tensorized_model"]["assetChecksOrError"]["checks"]
    assert {c["name"] for c in roundtrip} == {
        "tensors_match",
        "vllm_outputs_match",
        "great_expectations",
    }
    assert all(c["blocking"] and c["description"] for c in roundtrip)

    [event] = latest["assetOrError"]["assetMaterializations"]
    meta = entries(event)
    assert event["partition"] == KEY
    assert meta["sha"]["text"] == git(env.mirror / LLAMA, "rev-parse", "HEAD")
    assert meta["files"]["mdStr"].startswith("| file | size |")
    assert "config.json" in meta["files"]["mdStr"]

    [execution] = checks["assetCheckExecutions"]
    evaluation = execution["evaluation"]
    assert execution["runId"] == run_id
    assert (execution["partition"], evaluation["partition"]) == (KEY, KEY)
    assert execution["status"] == "FAILED" and evaluation["success"] is False
    assert "modified after publishing" in evaluation["description"]
    check_meta = entries(evaluation)
    assert check_meta["version"]["text"] == f"{LLAMA}@v1"
    assert "❌" in check_meta["files"]["mdStr"] + check_meta["tensors"]["mdStr"]
