"""The code location loads in Dagster's own tooling, and the CLI explains bad input."""

import json
import subprocess
from pathlib import Path

from dagster_project.cli import main
from tests.processes import run_tool

ROOT = Path(__file__).resolve().parents[1]


def validate() -> subprocess.CompletedProcess:
    """`dagster definitions validate` as a user runs it, with the test's MODELPUB_* env."""
    return run_tool("dagster", "definitions", "validate", "-w", "workspace.yaml")


def test_dagster_definitions_validate_passes(env):
    done = validate()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr


def dg(*args: str) -> subprocess.CompletedProcess:
    """Dagster's `dg` CLI in this project, configured by pyproject's [tool.dg]."""
    return run_tool("dg", *args)


def test_dg_checks_and_lists_the_same_definitions(env):
    checked = dg("check", "defs")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = dg("list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    defs = json.loads(listed.stdout)
    assets = {a["asset_key"] for a in defs["assets"]}
    assert {"model_snapshot", "tensorized_model", "published_version"} <= assets
    assert {j["name"] for j in defs["jobs"]} == {
        "publish_model",
        "publish_adapter",
        "reverify_model",
    }


def test_dagster_definitions_validate_reports_a_bad_catalog(env):
    env.write_catalog("hubs: {}\nmodels:\n  - {repo_id: ../x, hub: none, prompts: [a]}\n")
    done = validate()
    assert done.returncode != 0
    assert "models[0] (../x).repo_id" in done.stdout + done.stderr


def test_cli_errors_are_one_clear_line(env, capsys):
    assert main(["publish", "nobody/nothing"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelpub: no catalog entry with key 'nobody__nothing' (known: ")
    assert main(["resolve", "test-org/tiny-llama@stable"]) == 1
    assert "no alias 'stable'" in capsys.readouterr().err


def test_a_runs_executor_settings_apply_beside_the_fork_server(env):
    """The project fixes the multiprocess executor's start method only: what a run sets
    in the launchpad (max_concurrent, retries) still reaches the executor."""
    from dagster import validate_run_config

    from dagster_project.definitions import build_definitions

    job = build_definitions(env.settings).resolve_job_def("publish_model")
    asked = {"max_concurrent": 2, "retries": {"disabled": {}}}
    resolved = validate_run_config(job, {"execution": {"config": asked}})["execution"]
    config = resolved["multiprocess_executor"]
    assert {k: config[k] for k in asked} == asked
    assert "forkserver" in config["start_method"]
