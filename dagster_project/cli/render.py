"""How the CLI shows things: records and JSON on stdout, the publish summary, alias
changes in a line, and the flags that choose between text and JSON or add Dagster's
event stream."""

from __future__ import annotations

import argparse
import json

from resources.registry.records import AdapterVersion, AliasEntry, VersionRecord


def print_record(record: VersionRecord) -> None:
    print(record.to_json().decode())


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print Dagster's event stream too (also: MODELPUB_LOG_LEVEL=DEBUG)",
    )


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


def summary(record: VersionRecord, run_id: str) -> str:
    """What a person wants after a publish: the version, its checks, how to serve it."""
    from resources.operations.summary import human_size

    size = human_size(sum(f["size"] for f in record.files.values()))
    how = "published" if record.dagster_run_id == run_id else "already published, re-verified:"
    parts = {
        name: record.validation.get(name) for name in ("tensors", "generations", "expectations")
    }
    checks = ", ".join(
        f"{name} {'ok' if part.get('passed') else 'FAILED'}"
        for name, part in parts.items()
        if isinstance(part, dict)
    )
    return (
        f"\n{how} {record.reference}  (sha {record.hf_sha[:12]}, {record.dtype}, {size})\n"
        f"checks: {checks}\n"
        f"serve it: modelpub serve {served_with(record)}  (vLLM's own lines: "
        f"modelpub serve-command {record.reference})\n"
        f"Dagster run {run_id}: its full event log is in the Dagster UI "
        "(`dagster dev -w workspace.yaml`); add --verbose to see it here"
    )


def served_with(record: VersionRecord) -> str:
    """The reference `modelpub serve` takes for a version: an adapter comes with its base."""
    return record.base_reference if isinstance(record, AdapterVersion) else record.reference


def describe(repo_id: str, alias: str, entry: AliasEntry) -> str:
    """An alias change in a line, as `modelpub alias` prints it and the Dagster UI shows it."""
    if entry.why in ("protect", "unprotect"):
        return f"{repo_id}@{alias}: {entry.why}ed at {entry.to_suffix} (by {entry.by})"
    was = entry.from_suffix or "nothing"
    return f"{repo_id}@{alias}: {was} -> {entry.to_suffix} ({entry.why} by {entry.by})"
