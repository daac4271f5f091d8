"""`modelpub`: publish catalog entries and look up what is published."""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from resources.catalog import adapter_partition_key, load_catalog, partition_key
from resources.errors import ModelpubError
from resources.records import AdapterVersion, AliasEntry, VersionRecord, parse_version
from resources.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from dagster_project.launch import Launch
    from resources.registry import Registry


def _instance(settings: Settings) -> DagsterInstance:
    from dagster import DagsterInstance

    home = Path(settings.dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    return DagsterInstance.from_config(str(home))


def _registry(settings: Settings):
    from resources.registry import Registry
    from resources.storage import open_store

    return Registry(open_store(settings.store, settings.store_s3))


def _key_store(settings: Settings):
    from resources.storage.keys import open_key_store

    return open_key_store(settings.keys, settings.store, settings.keys_s3)


def publish(
    settings: Settings, key: str, force: bool = False, verbose: bool = False
) -> VersionRecord:
    """Run the publish job in-process for one catalog entry; returns the version record.
    Prints a line per step and a summary to stderr; `verbose`: Dagster's event stream too."""
    from dagster_project import launch

    entry = load_catalog(settings.catalog).entry(partition_key(key))
    run = launch.publish_model(entry, settings.executor, force=force)
    return _run_publish(settings, "models", run, verbose)


def publish_adapter(
    settings: Settings, name: str, force: bool = False, verbose: bool = False
) -> VersionRecord:
    """Publish a catalog adapter (repo id or partition key) against its base's `latest`."""
    from dagster_project import launch

    adapter = load_catalog(settings.catalog).adapter(name)
    run = launch.publish_adapter(adapter, settings.executor, force=force)
    return _run_publish(settings, "adapters", run, verbose)


# job -> the step that writes the record
PUBLISH_STEP = {"publish_model": "published_version", "publish_adapter": "published_adapter"}


def _ensure_partition(instance: DagsterInstance, partitions: str, key: str) -> None:
    """Add the entry's dynamic partition; a concurrent publish of the same entry may add it
    between the check and the insert, which is the same outcome, not an error."""
    from sqlalchemy.exc import IntegrityError

    if instance.has_dynamic_partition(partitions, key):
        return
    try:
        instance.add_dynamic_partitions(partitions, [key])
    except IntegrityError:
        if not instance.has_dynamic_partition(partitions, key):
            raise


def _run_publish(settings: Settings, partitions: str, run: Launch, verbose: bool) -> VersionRecord:
    """Run a publish job in-process for one partition; returns the published record."""
    from dagster_project.definitions import build_definitions
    from dagster_project.progress import StepLines, step_lines_logger

    if settings.executor == "k8s":
        raise ModelpubError(
            "MODELPUB_EXECUTOR=k8s: `modelpub publish` runs in this process, where the "
            "Kubernetes executor cannot start step pods; start the run from the Dagster UI "
            "(or let the sensor start it), which launches it through the instance's run "
            "launcher with the same run config"
        )

    defs = build_definitions(settings)
    instance = _instance(settings)
    _ensure_partition(instance, partitions, run.partition_key)
    job = defs.resolve_job_def(run.job_name)
    lines = StepLines(sys.stderr, live=sys.stderr.isatty())
    loggers = {**(job.loggers if verbose else {}), "modelpub_steps": step_lines_logger(lines)}
    # Dagster starts the loggers the run config names, and its console one if none;
    # verbose: the console one at DEBUG, as Dagster's own default is.
    logger_config = {name: {"config": {"log_level": "DEBUG"}} for name in job.loggers}
    run_config = {
        **run.run_config,
        "loggers": {"modelpub_steps": {}, **(logger_config if verbose else {})},
    }
    try:
        result = job.with_logger_defs(loggers).execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            tags=run.tags,
            run_config=run_config,
            raise_on_error=False,
        )
    finally:
        lines.close()
    key, publish_op = run.partition_key, PUBLISH_STEP[run.job_name]
    failed_checks = [
        f"{e.check_name}: {e.description or 'see the check metadata in the Dagster UI'}"
        for e in result.get_asset_check_evaluations()
        if not e.passed
    ]
    published = result.asset_materializations_for_node(publish_op)
    if not result.success or not published:
        errors = [
            f"{ev.step_key}: {_root_cause(ev.event_specific_data)}"
            for ev in result.all_events
            if ev.is_step_failure
        ]
        raise PublishFailed(key, result.run_id, failed_checks, errors)
    record = parse_version(published[0].metadata["record"].value)
    print(_summary(record, result.run_id), file=sys.stderr)
    return record


def _summary(record: VersionRecord, run_id: str) -> str:
    """What a person wants after a publish: the version, its checks, how to serve it."""
    from resources.summary import human_size

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
        f"serve it: modelpub serve {_served_with(record)}  (vLLM's own lines: "
        f"modelpub serve-command {record.reference})\n"
        f"Dagster run {run_id}: its full event log is in the Dagster UI "
        "(`dagster dev -w workspace.yaml`); add --verbose to see it here"
    )


def _served_with(record: VersionRecord) -> str:
    """The reference `modelpub serve` takes for a version: an adapter comes with its base."""
    return record.base_reference if isinstance(record, AdapterVersion) else record.reference


def _root_cause(failure) -> str:
    """What a step failure means, in one line: the step's own `Failure` description (kept
    when Dagster reports only "Exceeded max_retries"), else the innermost error's message."""
    described = failure.user_failure_data.description if failure.user_failure_data else None
    if described:
        return described.strip()
    error = failure.error
    while error.cause is not None:
        error = error.cause
    return re.sub(r"^[\w.]+: ", "", error.message.strip())


class PublishFailed(ModelpubError):
    def __init__(self, key: str, run_id: str, failed_checks: list[str], errors: list[str]):
        lines = [f"publishing {key} failed (Dagster run {run_id}); nothing was published"]
        lines += [f"  check failed: {c}" for c in failed_checks]
        lines += [f"  error: {e}" for e in errors]
        super().__init__("\n".join(lines))
        self.run_id = run_id


def _print(record: VersionRecord) -> None:
    print(record.to_json().decode())


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print Dagster's event stream too (also: MODELPUB_LOG_LEVEL=DEBUG)",
    )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


ALIAS_ACTIONS = {
    "rollback": "move ALIAS back to its previous target, once that version verifies",
    "protect": "keep publishes from moving ALIAS (only `alias set` or `rollback` move it)",
    "unprotect": "let publishes move ALIAS again",
}


def _alias_parser(sub) -> None:
    p = sub.add_parser("alias", help="move, roll back or protect an alias (kept in its history)")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="publish a catalog entry or adapter (key or repo id) now")
    p.add_argument("key")
    p.add_argument(
        "--force",
        action="store_true",
        help="publish a new suffix even if this sha is already published",
    )
    _verbose_flag(p)
    p.add_argument("--json", action="store_true", help="print the version record on stdout")
    p = sub.add_parser("list", help="published versions and aliases, as a table")
    p.add_argument("repo_id", nargs="?")
    _json_flag(p)
    p = sub.add_parser("resolve", help="the record for repo_id[@alias|@vN] (always JSON)")
    p.add_argument("reference")
    _json_flag(p)
    p = sub.add_parser("serve-command", help="the vllm serve command for repo_id[@alias|@vN]")
    p.add_argument("reference")
    _json_flag(p)
    p = sub.add_parser(
        "serve",
        help="verify repo_id[@alias|@vN] and start vLLM's OpenAI server on it, with its adapters",
    )
    p.add_argument("reference")
    p.add_argument(
        "vllm_args", nargs=argparse.REMAINDER, help="after --: more arguments for vLLM's server"
    )
    p = sub.add_parser("verify", help="check a published version's files, key and tensors")
    p.add_argument("reference", help="repo_id[@alias|@vN], default @latest")
    _json_flag(p)
    p = sub.add_parser(
        "fetch-config", help="download a version's config/tokenizer files for `vllm serve`"
    )
    p.add_argument("reference")
    p.add_argument("dest")
    p = sub.add_parser(
        "fetch",
        help="download a version's files, record, signature and public key, for "
        "`model_signing verify key`",
    )
    p.add_argument("reference")
    p.add_argument("dir", type=Path, help="a new or empty directory")
    p = sub.add_parser("gc", help="report (or --delete) files of publishes that never finished")
    p.add_argument("--delete", action="store_true", help="remove them instead of reporting")
    _json_flag(p)
    p.add_argument(
        "--older-than",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="also treat suffixes reserved this long ago by runs still marked running, or "
        "unknown to this Dagster instance, as abandoned (default: 24)",
    )
    p = sub.add_parser(
        "fetch-adapter",
        help="restore adapter_repo[@alias|@vN] (decrypted, PEFT safetensors) into a directory",
    )
    p.add_argument("reference")
    p.add_argument("dir", type=Path, help="a new or empty directory")
    p = sub.add_parser(
        "demo", help="make the demo model and adapter repos (or a new commit) and publish them"
    )
    p.add_argument("--new-commit", action="store_true", help="commit new random weights first")
    _verbose_flag(p)
    _alias_parser(sub)
    p = sub.add_parser("history", help="every change to a repo's aliases, oldest first")
    p.add_argument("reference", help="repo_id, or repo_id@alias for one alias")
    _json_flag(p)
    p = sub.add_parser("doctor", help="check what a publish needs, one line per check")
    p.add_argument(
        "--min-free-gib",
        type=float,
        default=1.0,
        metavar="GIB",
        help="the least free space the staging directory needs (default: 1)",
    )
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](Settings.from_env(), args)
    except ModelpubError as exc:
        print(f"modelpub: {exc}", file=sys.stderr)
        return 1


def _cmd_publish(settings: Settings, args) -> int:
    catalog = load_catalog(settings.catalog)
    adapter = partition_key(args.key) not in catalog.keys and any(
        args.key in (t.key, t.adapter.repo_id) for t in catalog.adapters
    )
    publisher = publish_adapter if adapter else publish
    record = publisher(
        settings, args.key, force=args.force, verbose=args.verbose or settings.verbose
    )
    if args.json:
        _print(record)
    return 0


def _cmd_list(settings: Settings, args) -> int:
    from resources.summary import COLUMNS, VersionSummary, text_table

    registry = _registry(settings)
    rows = []
    for repo in [args.repo_id] if args.repo_id else registry.repos():
        aliases = registry.aliases(repo)
        rows += [VersionSummary.of(record, aliases) for record in registry.versions(repo)]
    if args.json:
        _print_json([row.model_dump() for row in rows])
    else:
        print(
            text_table([row.cells() for row in rows], COLUMNS) if rows else "nothing published yet"
        )
    return 0


def _cmd_resolve(settings: Settings, args) -> int:
    _print(_registry(settings).resolve(args.reference))
    return 0


def _keyfile(settings: Settings, record: VersionRecord) -> str | None:
    from resources.layout import key_file
    from resources.storage.store import LocalStore

    keys = _key_store(settings)
    if record.key_id and isinstance(keys.store, LocalStore):
        return str(keys.store.path(key_file(record.key_id)))
    return None


def _serve_command(settings: Settings, reference: str) -> tuple[VersionRecord, str]:
    """The version `reference` names, and the shell lines that serve it."""
    from resources.serve import adapter_serve_command, serve_command

    registry = _registry(settings)
    record = registry.resolve(reference)
    if isinstance(record, AdapterVersion):
        base = registry.version(record.base_repo_id, record.base_suffix)
        keyfile = _keyfile(settings, base)
        return record, adapter_serve_command(record, base, registry.store, base_keyfile=keyfile)
    return record, serve_command(record, registry.store, keyfile=_keyfile(settings, record))


def _cmd_serve_command(settings: Settings, args) -> int:
    record, command = _serve_command(settings, args.reference)
    if args.json:
        _print_json({"reference": record.reference, "commands": command.splitlines()})
    else:
        print(command)
    return 0


def _cmd_serve(settings: Settings, args) -> int:
    """vLLM's server in a child process: signals go to it and the exit status is its own."""
    from resources.serving import prepare, run_server

    plan = prepare(args.reference, settings)
    extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    adapters = ", ".join(a.reference for a in plan.adapters) or "none"
    print(
        f"serving {plan.record.reference} (signature verified, each tensor checked as it "
        f"loads; adapters: {adapters}); config files in {plan.model_dir}",
        file=sys.stderr,
        flush=True,
    )
    return run_server(plan, extra)


def _cmd_verify(settings: Settings, args) -> int:
    from resources.validation.integrity import verify_published

    registry = _registry(settings)
    record = registry.resolve(args.reference)
    report = verify_published(registry, _key_store(settings), record)
    if args.json:
        _print_json(
            {
                "reference": report.reference,
                "ok": report.ok,
                "files": len(report.files),
                "tensors": report.tensors,
                "signing_key": report.signing_key,
                "problems": report.problems,
            }
        )
        return 0 if report.ok else 2
    if report.ok:
        print(
            f"{report.reference}: OK ({len(report.files)} files, {report.tensors} tensors "
            f"verified), signed by key {report.signing_key}"
        )
        return 0
    print(f"{report.reference}: {report.verdict}", file=sys.stderr)
    for problem in report.problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


def _cmd_fetch_adapter(settings: Settings, args) -> int:
    from resources.formats.lora import AdapterError, restore_adapter

    registry = _registry(settings)
    record = registry.resolve(args.reference)
    if not isinstance(record, AdapterVersion):
        raise AdapterError(
            f"{args.reference} is a model, not an adapter; serve it with "
            f"`modelpub serve-command {args.reference}`"
        )
    key_id = record.key_id
    key = _key_store(settings).get(key_id) if key_id else None
    prefix, _ = record.location
    dest = restore_adapter(registry.store, prefix, record.files, key_id, key, args.dir)
    print(
        f"restored {record.reference} (for {record.base_reference}) to {dest}",
        file=sys.stderr,
    )
    print(dest)
    return 0


def _cmd_demo(settings: Settings, args) -> int:
    from dagster_project.demo import DEMO_REPO, commit_count, commit_tiny_model, demo_repo_path

    catalog = load_catalog(settings.catalog)
    repo = demo_repo_path(catalog)
    if args.new_commit or not repo.exists():
        print(f"committing a tiny random model to {repo}", file=sys.stderr)
        commit_tiny_model(repo, seed=commit_count(repo))
    record = publish(settings, DEMO_REPO, verbose=args.verbose or settings.verbose)
    _print_how_to_serve(settings, record)
    return _demo_adapter(settings, args, catalog, repo)


def _print_how_to_serve(settings: Settings, record: VersionRecord) -> None:
    print("\nserve it (verified, with its adapters) with:", file=sys.stderr)
    print(f"modelpub serve {_served_with(record)}")
    print("or with vLLM's own command:", file=sys.stderr)
    print(_serve_command(settings, record.reference)[1])


def _demo_adapter(settings: Settings, args, catalog, base_repo: Path) -> int:
    """Publish the demo adapter (made once from the demo model) and say how to serve it."""
    from dagster_project.demo import (
        DEMO_ADAPTER,
        DEMO_REPO,
        commit_tiny_adapter,
        demo_adapter_path,
    )

    repo = demo_adapter_path(catalog)
    if not repo.exists():
        print(f"\ncommitting a tiny LoRA adapter to {repo}", file=sys.stderr)
        commit_tiny_adapter(repo, base_repo, DEMO_REPO)
    record = publish_adapter(settings, DEMO_ADAPTER, verbose=args.verbose or settings.verbose)
    print(f"\npublished adapter {record.reference} for {record.base_reference}", file=sys.stderr)
    _print_how_to_serve(settings, record)
    return 0


def _cmd_fetch_config(settings: Settings, args) -> int:
    from resources.formats.artifact import fetch_config

    registry = _registry(settings)
    record = registry.resolve(args.reference)
    prefix, _ = record.location
    written = fetch_config(registry.store, prefix, record.files, Path(args.dest))
    print(f"wrote {len(written)} files for {record.reference} to {args.dest}")
    return 0


def _cmd_fetch(settings: Settings, args) -> int:
    from resources.signing import PUBLIC_KEY_FILE, SIGNATURE_FILE, fetch_signed

    registry = _registry(settings)
    record = registry.resolve(args.reference)
    dest = args.dir
    written = fetch_signed(registry, record, dest)
    print(
        f"wrote {record.reference} to {dest} ({len(written)} files); check it with\n"
        f"  model_signing verify key {dest} --signature {dest / SIGNATURE_FILE} "
        f"--public_key {dest / PUBLIC_KEY_FILE}\n"
        f"once `sha256sum {dest / PUBLIC_KEY_FILE}` shows the fingerprint your registry's "
        f"operator gave you ({record.signing_key} signed this version)",
        file=sys.stderr,
    )
    print(dest)
    return 0


def _cmd_gc(settings: Settings, args) -> int:
    from datetime import timedelta

    from assets.state import run_state
    from resources import gc

    registry = _registry(settings)
    keys = _key_store(settings)
    runs = partial(run_state, _instance(settings))
    found = gc.find_orphans(registry, keys, runs, timedelta(hours=args.older_than))
    statuses = []
    for orphan in found.orphans:
        status = "orphaned"
        if args.delete:
            removed = gc.remove(registry, keys, orphan)
            status = "removed" if removed else "kept (a publish took it meanwhile)"
        statuses.append(status)
    if args.json:
        _print_json(
            {
                "orphans": [
                    {
                        "reference": o.reference,
                        "status": status,
                        "why": o.why,
                        "files": [registry.store.uri(k) for k in o.keys],
                        "unfinished_uploads": [registry.store.uri(k) for k in o.unfinished],
                        "key_id": o.key_id,
                    }
                    for o, status in zip(found.orphans, statuses, strict=True)
                ],
                "unclaimed": [registry.store.uri(k) for k in found.unclaimed],
            }
        )
        return 0
    for orphan, status in zip(found.orphans, statuses, strict=True):
        key = f", key {orphan.key_id}" if orphan.key_id else ""
        print(
            f"{status}: {orphan.reference} ({orphan.why}): "
            f"{len(orphan.keys)} files, {len(orphan.unfinished)} unfinished uploads{key}"
        )
        for stored in orphan.keys + orphan.unfinished:
            print(f"  {registry.store.uri(stored)}")
    if found.unclaimed:
        print(
            f"unclaimed: {len(found.unclaimed)} files that no reservation or record names "
            "(not written by a publish of this registry; left alone, remove them by hand)"
        )
        for stored in found.unclaimed:
            print(f"  {registry.store.uri(stored)}")
    if not found.orphans and not found.unclaimed:
        print("nothing to clean up")
    elif found.orphans and not args.delete:
        print("run `modelpub gc --delete` to remove them")
    return 0


def _mover() -> str:
    """Who a person's alias command is recorded as: user@host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _verified(settings: Settings, registry: Registry, record: VersionRecord) -> None:
    """Refuse a rollback to a version whose files or tensors no longer verify."""
    from resources.registry import RegistryError
    from resources.validation.integrity import verify_published

    report = verify_published(registry, _key_store(settings), record)
    if not report.ok:
        problems = "; ".join(" ".join(p.split()) for p in report.problems)
        raise RegistryError(f"{record.reference} fails verification, not rolling back: {problems}")


def _describe(repo_id: str, alias: str, entry: AliasEntry) -> str:
    if entry.why in ("protect", "unprotect"):
        return f"{repo_id}@{alias}: {entry.why}ed at {entry.to_suffix} (by {entry.by})"
    was = entry.from_suffix or "nothing"
    return f"{repo_id}@{alias}: {was} -> {entry.to_suffix} ({entry.why} by {entry.by})"


def _cmd_alias(settings: Settings, args) -> int:
    registry = _registry(settings)
    by, alias = _mover(), args.alias
    if args.action == "set":
        target = registry.resolve(args.reference)
        repo_id = target.repo_id
        entry = registry.set_alias(repo_id, alias, target.suffix, by, args.reason)
    elif args.action == "rollback":
        repo_id = args.repo_id
        verify = partial(_verified, settings, registry)
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
    print(_describe(repo_id, alias, entry))
    _observe(settings, registry.version(repo_id, entry.to_suffix), alias, entry)
    return 0


def _observe(settings: Settings, record: VersionRecord, alias: str, entry: AliasEntry) -> None:
    """Show a person's alias change in the Dagster UI: an observation of the published
    asset's partition. Best effort: the change is made whether or not Dagster hears of it."""
    from resources.summary import history_cells

    if isinstance(record, AdapterVersion):
        asset, partitions = "published_adapter", "adapters"
        key = adapter_partition_key(record.base_repo_id, record.repo_id)
    else:
        asset, partitions, key = "published_version", "models", partition_key(record.repo_id)
    try:
        from dagster import AssetKey, AssetObservation

        with _instance(settings) as instance:
            _ensure_partition(instance, partitions, key)
            instance.report_runless_asset_event(
                AssetObservation(
                    asset_key=AssetKey(asset),
                    partition=key,
                    description=_describe(record.repo_id, alias, entry),
                    metadata=history_cells({"alias": alias, **entry.model_dump()}),
                )
            )
    except Exception as exc:  # noqa: BLE001 - any failure to record it leaves the move made
        print(
            f"modelpub: warning: {record.repo_id}@{alias} changed, but the Dagster instance did "
            f"not record it: {' '.join(str(exc).split())}",
            file=sys.stderr,
        )


def _cmd_history(settings: Settings, args) -> int:
    from resources.summary import HISTORY_COLUMNS, alias_history, history_cells, text_table

    registry = _registry(settings)
    repo_id, _, alias = args.reference.partition("@")
    records = [registry.alias(repo_id, alias)] if alias else registry.alias_records(repo_id)
    entries = alias_history(records)
    if args.json:
        _print_json(entries)
    elif entries:
        print(text_table([history_cells(e) for e in entries], HISTORY_COLUMNS))
    else:
        print(f"{repo_id}: no aliases yet")
    return 0


def _cmd_doctor(settings: Settings, args) -> int:
    from resources.doctor import run_checks

    checks = run_checks(settings, min_free=int(args.min_free_gib * (1 << 30)))
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1


COMMANDS = {
    "publish": _cmd_publish,
    "list": _cmd_list,
    "resolve": _cmd_resolve,
    "serve-command": _cmd_serve_command,
    "serve": _cmd_serve,
    "verify": _cmd_verify,
    "demo": _cmd_demo,
    "fetch-adapter": _cmd_fetch_adapter,
    "fetch-config": _cmd_fetch_config,
    "fetch": _cmd_fetch,
    "gc": _cmd_gc,
    "doctor": _cmd_doctor,
    "alias": _cmd_alias,
    "history": _cmd_history,
}

if __name__ == "__main__":
    sys.exit(main())
