"""The CLI as a person meets it: every domain error is one line and a non-zero exit, and
read-only commands start fast (no torch, no vLLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dagster_project import cli
from dagster_project.cli.runner import ensure_partition
from resources.catalog import CatalogError
from resources.errors import ModelpubError
from resources.formats.format import FormatError, StagingFull
from resources.formats.lora import AdapterError
from resources.formats.tensorize import TensorizeError
from resources.registry.registry import Registry, RegistryError
from resources.sources.hub import HubError
from resources.storage.keys import KeyStoreError
from resources.storage.store import LocalStore, StoreError
from resources.vllm.runner import VllmRunError
from tests.conftest import LLAMA
from tests.records import version_record

DOMAIN_ERRORS = [
    AdapterError,
    CatalogError,
    FormatError,
    HubError,
    KeyStoreError,
    RegistryError,
    StagingFull,
    StoreError,
    TensorizeError,
    VllmRunError,
    cli.PublishFailed,
]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dagster_project.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelpub: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: e.__name__)
def test_every_domain_error_is_one_line_from_any_command(env, monkeypatch, capsys, error):
    assert issubclass(error, ModelpubError)
    message = "what went wrong, and what to do"
    raised = error(message) if error is not cli.PublishFailed else error("k", "r", [], [message])

    def fails(self):
        raise raised

    monkeypatch.setattr(Registry, "repos", fails)
    assert cli.main(["list"]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


@pytest.mark.parametrize(
    ("args", "environ", "expected"),
    [
        (["resolve", "org/none"], {}, "org/none: no alias 'latest'"),
        (["resolve", "org/none@v3"], {}, "org/none@v3 is not published"),
        (["publish", "org/unknown"], {}, "no catalog entry with key 'org__unknown'"),
        (["publish", LLAMA], {"MODELPUB_EXECUTOR": "celery"}, "MODELPUB_EXECUTOR='celery'"),
        (
            ["publish", LLAMA],
            {"MODELPUB_GPU_NODE_SELECTOR": "nvidia-l4"},
            "MODELPUB_GPU_NODE_SELECTOR is not JSON",
        ),
        (["list"], {"MODELPUB_CATALOG": "/nonexistent/catalog.yaml"}, None),
        (["verify", "org/none@v1"], {}, "org/none@v1 is not published"),
    ],
)
def test_cli_errors_are_one_line(env, args, environ, expected):
    done = run_cli(*args, **environ)
    if expected is None:  # `list` needs no catalog
        assert done.returncode == 0, done.stderr
        return
    assert expected in one_line_error(done)


def test_a_malformed_catalog_is_one_line(env):
    env.write_catalog("models: [{repo_id: acme}]\n")
    assert "repo id like 'org/name'" in one_line_error(run_cli("publish", "acme"))


def test_read_only_commands_import_neither_torch_nor_vllm(env):
    """`list`, `resolve`, `serve-command` and `history` answer in well under a second: no
    torch."""
    record = version_record(
        LLAMA, "v1", dtype="float32", encrypted=True, key_id="k/v1", artifact_uri="/srv/models/v1"
    )
    registry = Registry(LocalStore(env.settings.store))
    registry.publish(record)
    registry.move_alias(LLAMA, "latest", "v1")
    probe = (
        "import json, sys; from dagster_project.cli import main; code = main(sys.argv[1:]); "
        "print(json.dumps({'code': code, 'heavy': sorted({'torch', 'vllm', 'transformers'} "
        "& set(sys.modules))}), file=sys.stderr)"
    )
    for args in (
        ["list"],
        ["resolve", LLAMA],
        ["serve-command", f"{LLAMA}@v1"],
        ["history", LLAMA],
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120
        )
        result = json.loads(done.stderr.strip().splitlines()[-1])
        assert result == {"code": 0, "heavy": []}, (args, done.stderr)


def test_a_publish_that_loses_the_partition_race_still_runs(instance, monkeypatch):
    """Two publishes of a new entry both see its partition missing; the one that inserts
    second must carry on (this failed a concurrent publish in CI)."""
    key = LLAMA.replace("/", "__")
    instance.add_dynamic_partitions("models", [key])  # the other publish won the race
    seen = iter([False])  # ... after this one had checked
    real_check = instance.has_dynamic_partition
    monkeypatch.setattr(
        instance, "has_dynamic_partition", lambda *a: next(seen, None) or real_check(*a)
    )
    ensure_partition(instance, "models", key)
    assert instance.get_dynamic_partitions("models") == [key]


def test_list_is_an_aligned_table_and_json_for_scripts(env, capsys):
    registry = Registry(LocalStore(env.settings.store))
    files = {"model.tensors": {"size": 2_500_000, "sha256": "0" * 64}}
    registry.publish(version_record(LLAMA, "v1", hf_sha="a" * 40, files=files))
    registry.publish(
        version_record(LLAMA, "v2", hf_sha="b" * 40, dtype="bfloat16", validation={"passed": True})
    )
    lora = dict(kind="adapter", rank=8, base_repo_id=LLAMA, base_suffix="v2", base_hf_sha="b" * 40)
    registry.publish(version_record("org/lora", "v1", format="peft-lora", **lora))
    registry.move_alias(LLAMA, "latest", "v2")
    registry.move_alias(LLAMA, "stable", "v2")

    assert cli.main(["list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        c.upper()
        for c in ("reference", "sha", "dtype", "format", "size", "published", "aliases", "verified")
    ]
    assert len(rows) == 3
    starts = [header.index(c) for c in ("SHA", "DTYPE", "SIZE", "ALIASES")]
    for row in rows:  # every column starts where its header does
        assert all(row[s - 2 : s] == "  " and row[s] != " " for s in starts), row
    v1, v2 = (r for r in rows if r.startswith(LLAMA))
    assert v1.split()[1:5] == ["a" * 12, "float16", "hf", "2.50"] and v1.split()[-2:] == ["-", "no"]
    assert v2.split()[-2:] == ["latest,stable", "yes"]
    assert any(r.startswith(f"org/lora@v1 (on {LLAMA}@v2)") for r in rows)

    assert cli.main(["list", LLAMA, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["reference"], v["size"], v["aliases"], v["verified"]) for v in listed] == [
        (f"{LLAMA}@v1", 2_500_000, [], False),
        (f"{LLAMA}@v2", 0, ["latest", "stable"], True),
    ]


def test_serve_command_in_json(env, capsys):
    registry = Registry(LocalStore(env.settings.store))
    registry.publish(version_record(LLAMA, "v1", artifact_uri="/srv/v1"))
    assert cli.main(["serve-command", f"{LLAMA}@v1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["reference"] == f"{LLAMA}@v1"
    assert printed["commands"][-1].startswith("vllm serve /srv/v1 --load-format tensorizer")
