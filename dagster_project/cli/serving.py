"""`modelpub serve`, `serve-command`, `fetch-config` and `fetch-adapter`: what a serving
host runs, from the registry's record of a version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dagster_project.cli.render import json_flag, print_json
from resources.registry.records import AdapterVersion, VersionRecord
from resources.settings import Settings


def add_parsers(sub) -> None:
    p = sub.add_parser("serve-command", help="the vllm serve command for repo_id[@alias|@vN]")
    p.add_argument("reference")
    json_flag(p)
    p.set_defaults(run=_serve_command)
    p = sub.add_parser(
        "serve",
        help="verify repo_id[@alias|@vN] and start vLLM's OpenAI server on it, with its adapters",
    )
    p.add_argument("reference")
    p.add_argument(
        "vllm_args", nargs=argparse.REMAINDER, help="after --: more arguments for vLLM's server"
    )
    p.set_defaults(run=_serve)
    p = sub.add_parser(
        "fetch-config", help="download a version's config/tokenizer files for `vllm serve`"
    )
    p.add_argument("reference")
    p.add_argument("dest")
    p.set_defaults(run=_fetch_config)
    p = sub.add_parser(
        "fetch-adapter",
        help="restore adapter_repo[@alias|@vN] (decrypted, PEFT safetensors) into a directory",
    )
    p.add_argument("reference")
    p.add_argument("dir", type=Path, help="a new or empty directory")
    p.set_defaults(run=_fetch_adapter)


def _keyfile(settings: Settings, record: VersionRecord) -> str | None:
    from resources.layout import key_file
    from resources.storage.store import LocalStore
    from resources.stores import key_store

    keys = key_store(settings)
    if record.key_id and isinstance(keys.store, LocalStore):
        return str(keys.store.path(key_file(record.key_id)))
    return None


def serve_command(settings: Settings, reference: str) -> tuple[VersionRecord, str]:
    """The version `reference` names, and the shell lines that serve it."""
    from resources.serving.command import adapter_serve_command
    from resources.serving.command import serve_command as model_serve_command
    from resources.stores import open_registry

    registry = open_registry(settings)
    record = registry.resolve(reference)
    if isinstance(record, AdapterVersion):
        base = registry.version(record.base_repo_id, record.base_suffix)
        keyfile = _keyfile(settings, base)
        return record, adapter_serve_command(record, base, registry.store, base_keyfile=keyfile)
    return record, model_serve_command(record, registry.store, keyfile=_keyfile(settings, record))


def _serve_command(settings: Settings, args) -> int:
    record, command = serve_command(settings, args.reference)
    if args.json:
        print_json({"reference": record.reference, "commands": command.splitlines()})
    else:
        print(command)
    return 0


def _serve(settings: Settings, args) -> int:
    """vLLM's server in a child process: signals go to it and the exit status is its own."""
    from resources.serving.prepare import prepare, run_server

    plan = prepare(args.reference, settings)
    extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    adapters = ", ".join(a.reference for a in plan.adapters) or "none"
    print(
        f"serving {plan.record.reference} (signature verified, the tensors checked against it "
        f"as they load; adapters: {adapters}); config files in {plan.model_dir}",
        file=sys.stderr,
        flush=True,
    )
    return run_server(plan, extra)


def _fetch_config(settings: Settings, args) -> int:
    from resources.formats.artifact import fetch_config
    from resources.stores import open_registry

    registry = open_registry(settings)
    record = registry.resolve(args.reference)
    prefix, _ = record.location
    written = fetch_config(registry.store, prefix, record.files, Path(args.dest))
    print(f"wrote {len(written)} files for {record.reference} to {args.dest}")
    return 0


def _fetch_adapter(settings: Settings, args) -> int:
    from resources.formats.lora import AdapterError, restore_adapter
    from resources.stores import key_store, open_registry

    registry = open_registry(settings)
    record = registry.resolve(args.reference)
    if not isinstance(record, AdapterVersion):
        raise AdapterError(
            f"{args.reference} is a model, not an adapter; serve it with "
            f"`modelpub serve-command {args.reference}`"
        )
    key_id = record.key_id
    key = key_store(settings).get(key_id) if key_id else None
    prefix, _ = record.location
    dest = restore_adapter(registry.store, prefix, record.files, key_id, key, args.dir)
    print(
        f"restored {record.reference} (for {record.base_reference}) to {dest}",
        file=sys.stderr,
    )
    print(dest)
    return 0
