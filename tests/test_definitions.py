"""The code location loads in Dagster's own tooling, and the CLI explains bad input."""

import os
import subprocess
import sys
from pathlib import Path

from dagster_project.cli import main

ROOT = Path(__file__).resolve().parents[1]


def validate() -> subprocess.CompletedProcess:
    """`dagster definitions validate` as a user runs it, with the test's MODELPUB_* env."""
    dagster = Path(sys.executable).parent / "dagster"
    return subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_dagster_definitions_validate_passes(env):
    done = validate()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr


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
