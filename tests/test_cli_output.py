"""What the CLI prints for today's records (tests/fixtures/records), kept as a snapshot in
tests/snapshots/cli_output.json: each read-only command's output and exit status, and the
records read back, stay the same when the CLI's code moves. After a deliberate change,
`MODELPUB_UPDATE_SNAPSHOTS=1 pytest tests/test_cli_output.py` rewrites the snapshot."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from dagster_project import cli
from resources.registry.records import parse_version
from resources.registry.registry import Registry
from resources.storage.store import LocalStore

FIXTURES = Path(__file__).parent / "fixtures" / "records"
SNAPSHOT = Path(__file__).parent / "snapshots" / "cli_output.json"
MODEL, ADAPTER = "modelpub-demo/tiny-llama", "modelpub-demo/tiny-llama-lora"
COMMANDS = [
    ["list"],
    ["list", "--json"],
    ["list", ADAPTER],
    ["resolve", f"{MODEL}@v1"],
    ["resolve", f"{ADAPTER}@latest"],
    ["serve-command", MODEL],
    ["serve-command", "--json", f"{ADAPTER}@v1"],
    ["history", MODEL],
    ["history", "--json", f"{MODEL}@latest"],
    ["gc"],
    ["resolve", "org/none"],
    ["verify", f"{MODEL}@v9"],
    ["fetch-adapter", f"{MODEL}@v1", "<root>/out"],
    ["alias", "set", f"{MODEL}@v1", "latest"],
    ["alias", "protect", MODEL, "latest", "--reason", "frozen"],
    ["history", MODEL],
]
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")


def normalized(text: str, root: Path) -> str:
    """Without what differs between runs: the test's directory and the times of changes."""
    return TIME.sub("<time>", text.replace(str(root), "<root>"))


def test_the_cli_prints_what_it_printed_for_todays_records(env, capsys, monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "host")
    monkeypatch.setattr("getpass.getuser", lambda: "user")
    registry = Registry(LocalStore(env.settings.store))
    model = parse_version(json.loads((FIXTURES / "model-schema2.json").read_text()))
    adapter = parse_version(json.loads((FIXTURES / "adapter-schema2.json").read_text()))
    for record in (model, adapter):
        registry.publish(record)
        registry.set_alias(record.repo_id, "latest", record.suffix, "publish", None)
    seen = {}
    for argv in COMMANDS:
        code = cli.main([a.replace("<root>", str(env.root)) for a in argv])
        out, err = capsys.readouterr()
        seen[" ".join(argv)] = {
            "exit": code,
            "stdout": normalized(out, env.root),
            "stderr": normalized(err, env.root),
        }
    seen["records read back"] = [
        registry.version(r.repo_id, r.suffix).to_dict() for r in (model, adapter)
    ]
    if os.environ.get("MODELPUB_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(seen, indent=2, sort_keys=True) + "\n")
        pytest.fail(
            "snapshot rewritten: review its diff, then rerun without MODELPUB_UPDATE_SNAPSHOTS"
        )
    assert seen == json.loads(SNAPSHOT.read_text())
