"""A snapshot of what the code location declares: assets (keys, groups, kinds, tags,
owners, partitions, deps), checks (blocking or not) and each job's steps (pools, op tag
names). A change to any of it shows in review as a change to
tests/snapshots/definitions.json; `MODELPUB_UPDATE_SNAPSHOTS=1 pytest tests/test_defs.py`
rewrites the file after a deliberate change."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster_project.definitions import build_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def describe(defs) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "tags": {k: v for k, v in node.tags.items() if not k.startswith("dagster/kind/")},
            "owners": list(node.owners),
            "partitions": node.partitions_def.name if node.partitions_def else None,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
        }
    checks = {}
    for check in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.path, k.name)):
        spec = graph.get_check_spec(check)
        checks[f"{check.asset_key.to_user_string()}:{check.name}"] = {"blocking": spec.blocking}
    jobs = {}
    for job in sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")):
        jobs[job] = {
            node.name: {"pool": node.definition.pool, "op_tags": sorted(node.definition.tags)}
            for node in sorted(defs.resolve_job_def(job).graph.nodes, key=lambda n: n.name)
        }
    return {"assets": assets, "checks": checks, "jobs": jobs}


def test_definitions_match_the_snapshot(env):
    described = describe(build_definitions(env.settings))
    if os.environ.get("MODELPUB_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")
    assert described == json.loads(SNAPSHOT.read_text())
