"""`modelpub verify` and `modelpub fetch`: check a published version, or take it with its
signature to check with the upstream `model_signing` tool."""

from __future__ import annotations

import sys
from pathlib import Path

from dagster_project.cli.render import json_flag, print_json
from resources.settings import Settings
from resources.stores import key_store, open_registry


def add_parsers(sub) -> None:
    p = sub.add_parser("verify", help="check a published version's files, key and tensors")
    p.add_argument("reference", help="repo_id[@alias|@vN], default @latest")
    json_flag(p)
    p.set_defaults(run=_verify)
    p = sub.add_parser(
        "fetch",
        help="download a version's files, record, signature and public key, for "
        "`model_signing verify key`",
    )
    p.add_argument("reference")
    p.add_argument("dir", type=Path, help="a new or empty directory")
    p.set_defaults(run=_fetch)


def _verify(settings: Settings, args) -> int:
    from resources.validation.integrity import verify_published

    registry = open_registry(settings)
    record = registry.resolve(args.reference)
    report = verify_published(registry, key_store(settings), record)
    if args.json:
        print_json(
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


def _fetch(settings: Settings, args) -> int:
    from resources.registry.signing import PUBLIC_KEY_FILE, SIGNATURE_FILE, fetch_signed

    registry = open_registry(settings)
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
