"""`modelpub alias`: a person moves, rolls back or protects an alias; the change is kept in
the alias's history and shown in the Dagster UI."""

from __future__ import annotations

import sys

from dagster_project.cli.render import describe
from dagster_project.cli.runner import ensure_partition, instance
from resources.catalog import adapter_partition_key, partition_key
from resources.registry.records import AdapterVersion, AliasEntry, VersionRecord
from resources.settings import Settings
from resources.stores import key_store, open_registry

ALIAS_ACTIONS = {
    "rollback": "move ALIAS back to its previous target, once that version verifies",
    "protect": "keep publishes from moving ALIAS (only `alias set` or `rollback` move it)",
    "unprotect": "let publishes move ALIAS again",
}


def add_parsers(sub) -> None:
    p = sub.add_parser("alias", help="move, roll back or protect an alias (kept in its history)")
    p.set_defaults(run=_alias)
    actions = p.add_subparsers(dest="action", required=True)
    set_ = actions.add_parser("set", help="point ALIAS at a published version, protected or not")
    set_.add_argument("reference", help="repo_id@vN, or repo_id@alias: the version it points at")
    parsers = [set_]
    for action, help in ALIAS_ACTIONS.items():
        parsers.append(actions.add_parser(action, help=help))
        parsers[-1].add_argument("repo_id")
    for a in parsers:
        a.add_argument("alias")
        a.add_argument("--reason", help="why, kept in the alias's history")


def _mover() -> str:
    """Who a person's alias command is recorded as: user@host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _alias(settings: Settings, args) -> int:
    from resources.validation.integrity import require_verified

    registry = open_registry(settings)
    by, alias = _mover(), args.alias
    if args.action == "set":
        target = registry.resolve(args.reference)
        repo_id = target.repo_id
        entry = registry.set_alias(repo_id, alias, target.suffix, by, args.reason)
    elif args.action == "rollback":
        repo_id = args.repo_id

        def verify(record: VersionRecord) -> None:  # the key store opened only if needed
            require_verified(registry, key_store(settings), record)

        entry = registry.rollback_alias(repo_id, alias, by, args.reason, verify)
    else:
        repo_id = args.repo_id
        protect = args.action == "protect"
        entry = registry.protect_alias(repo_id, alias, protect, by, args.reason)
    if entry is None:
        current = registry.alias(repo_id, alias)
        state = "protected" if current.protected else "not protected"
        print(f"{repo_id}@{alias}: unchanged, at {current.suffix} and {state}")
        return 0
    print(describe(repo_id, alias, entry))
    _observe(settings, registry.version(repo_id, entry.to_suffix), alias, entry)
    return 0


def _observe(settings: Settings, record: VersionRecord, alias: str, entry: AliasEntry) -> None:
    """Show a person's alias change in the Dagster UI: an observation of the published
    asset's partition. Best effort: the change is made whether or not Dagster hears of it."""
    from assets.publish_jobs import ADAPTER_JOB, MODEL_JOB
    from resources.operations.summary import history_cells

    if isinstance(record, AdapterVersion):
        asset, partitions = ADAPTER_JOB.publish, ADAPTER_JOB.partitions
        key = adapter_partition_key(record.base_repo_id, record.repo_id)
    else:
        asset, partitions = MODEL_JOB.publish, MODEL_JOB.partitions
        key = partition_key(record.repo_id)
    try:
        from dagster import AssetKey, AssetObservation

        with instance(settings) as dagster:
            ensure_partition(dagster, partitions, key)
            dagster.report_runless_asset_event(
                AssetObservation(
                    asset_key=AssetKey(asset),
                    partition=key,
                    description=describe(record.repo_id, alias, entry),
                    metadata=history_cells({"alias": alias, **entry.model_dump()}),
                )
            )
    except Exception as exc:  # noqa: BLE001 - any failure to record it leaves the move made
        print(
            f"modelpub: warning: {record.repo_id}@{alias} changed, but the Dagster instance did "
            f"not record it: {' '.join(str(exc).split())}",
            file=sys.stderr,
        )
