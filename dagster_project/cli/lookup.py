"""`modelpub list`, `resolve` and `history`: what the registry holds, read only."""

from __future__ import annotations

from dagster_project.cli.render import json_flag, print_json, print_record
from resources.settings import Settings
from resources.stores import open_registry


def add_parsers(sub) -> None:
    p = sub.add_parser("list", help="published versions and aliases, as a table")
    p.add_argument("repo_id", nargs="?")
    json_flag(p)
    p.set_defaults(run=_list)
    p = sub.add_parser("resolve", help="the record for repo_id[@alias|@vN] (always JSON)")
    p.add_argument("reference")
    json_flag(p)
    p.set_defaults(run=_resolve)
    p = sub.add_parser("history", help="every change to a repo's aliases, oldest first")
    p.add_argument("reference", help="repo_id, or repo_id@alias for one alias")
    json_flag(p)
    p.set_defaults(run=_history)


def _list(settings: Settings, args) -> int:
    from resources.operations.summary import COLUMNS, VersionSummary, text_table

    registry = open_registry(settings)
    rows = []
    for repo in [args.repo_id] if args.repo_id else registry.repos():
        aliases = registry.aliases(repo)
        rows += [VersionSummary.of(record, aliases) for record in registry.versions(repo)]
    if args.json:
        print_json([row.model_dump() for row in rows])
    else:
        print(
            text_table([row.cells() for row in rows], COLUMNS) if rows else "nothing published yet"
        )
    return 0


def _resolve(settings: Settings, args) -> int:
    print_record(open_registry(settings).resolve(args.reference))
    return 0


def _history(settings: Settings, args) -> int:
    from resources.operations.summary import (
        HISTORY_COLUMNS,
        alias_history,
        history_cells,
        text_table,
    )

    registry = open_registry(settings)
    repo_id, _, alias = args.reference.partition("@")
    records = [registry.alias(repo_id, alias)] if alias else registry.alias_records(repo_id)
    entries = alias_history(records)
    if args.json:
        print_json(entries)
    elif entries:
        print(text_table([history_cells(e) for e in entries], HISTORY_COLUMNS))
    else:
        print(f"{repo_id}: no aliases yet")
    return 0
