"""`modelpub publish` and `modelpub demo`: publish runs, started from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

from dagster_project.cli.render import print_record, served_with, verbose_flag
from dagster_project.cli.runner import publish, publish_adapter
from dagster_project.cli.serving import serve_command
from resources.catalog import Catalog, load_catalog
from resources.registry.records import VersionRecord
from resources.settings import Settings


def add_parsers(sub) -> None:
    p = sub.add_parser("publish", help="publish a catalog entry or adapter (key or repo id) now")
    p.add_argument("key")
    p.add_argument(
        "--force",
        action="store_true",
        help="publish a new suffix even if this sha is already published",
    )
    verbose_flag(p)
    p.add_argument("--json", action="store_true", help="print the version record on stdout")
    p.set_defaults(run=_publish)
    p = sub.add_parser(
        "demo", help="make the demo model and adapter repos (or a new commit) and publish them"
    )
    p.add_argument("--new-commit", action="store_true", help="commit new random weights first")
    verbose_flag(p)
    p.set_defaults(run=_demo)


def _publish(settings: Settings, args) -> int:
    catalog = load_catalog(settings.catalog)
    publisher = publish_adapter if catalog.is_adapter(args.key) else publish
    record = publisher(
        settings, args.key, force=args.force, verbose=args.verbose or settings.verbose
    )
    if args.json:
        print_record(record)
    return 0


def _demo(settings: Settings, args) -> int:
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
    print(f"modelpub serve {served_with(record)}")
    print("or with vLLM's own command:", file=sys.stderr)
    print(serve_command(settings, record.reference)[1])


def _demo_adapter(settings: Settings, args, catalog: Catalog, base_repo: Path) -> int:
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
