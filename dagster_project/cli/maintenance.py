"""`modelpub gc` and `modelpub doctor`: clean up after publishes that never finished, and
check what a publish needs before one runs."""

from __future__ import annotations

from functools import partial

from dagster_project.cli.render import json_flag, print_json
from dagster_project.cli.runner import instance
from resources.settings import Settings
from resources.stores import open_stores


def add_parsers(sub) -> None:
    p = sub.add_parser("gc", help="report (or --delete) files of publishes that never finished")
    p.add_argument("--delete", action="store_true", help="remove them instead of reporting")
    json_flag(p)
    p.add_argument(
        "--older-than",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="also treat suffixes reserved this long ago by runs still marked running, or "
        "unknown to this Dagster instance, as abandoned (default: 24)",
    )
    p.set_defaults(run=_gc)
    p = sub.add_parser("doctor", help="check what a publish needs, one line per check")
    p.add_argument(
        "--min-free-gib",
        type=float,
        default=1.0,
        metavar="GIB",
        help="the least free space the staging directory needs (default: 1)",
    )
    p.set_defaults(run=_doctor)


def _gc(settings: Settings, args) -> int:
    from datetime import timedelta

    from assets.state import run_state
    from resources.registry import gc

    registry, encryption_keys = open_stores(settings)
    with instance(settings) as dagster:
        runs = partial(run_state, dagster)
        found = gc.find_orphans(registry, encryption_keys, runs, timedelta(hours=args.older_than))
    statuses = []
    for orphan in found.orphans:
        status = "orphaned"
        if args.delete:
            removed = gc.remove(registry, encryption_keys, orphan)
            status = "removed" if removed else "kept (a publish took it meanwhile)"
        statuses.append(status)
    if args.json:
        print_json(
            {
                "orphans": [
                    {
                        "reference": o.reference,
                        "status": status,
                        "why": o.why,
                        "files": [registry.store.uri(k) for k in o.objects],
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
            f"{len(orphan.objects)} files, {len(orphan.unfinished)} unfinished uploads{key}"
        )
        for stored in orphan.objects + orphan.unfinished:
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


def _doctor(settings: Settings, args) -> int:
    from resources.operations.doctor import run_checks

    checks = run_checks(settings, min_free=int(args.min_free_gib * (1 << 30)))
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1
