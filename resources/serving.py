"""Serve a published version from its registry reference.

`vllm_kwargs("org/model@prod")` verifies the version's signature, caches its config and
tokenizer files, restores the LoRA adapters published for that base version, and returns
the arguments of `vllm.LLM` (or, as `server_argv`, of vLLM's OpenAI server) that load it
with the `modelpub` model loader (resources/vllm/loader.py). The loader reads the key and
the store's credentials from the environment's settings inside the vLLM process, so no
secret is ever on a command line or in a file.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resources import digests, tensorize
from resources.errors import ModelpubError
from resources.formats.access import stream_kwargs
from resources.formats.artifact import fetch_config
from resources.formats.format import ArtifactFormat
from resources.formats.lora import restore_adapter
from resources.records import AdapterVersion, ModelVersion, VersionRecord
from resources.registry import Registry, suffix_number
from resources.settings import Settings
from resources.signing import verify_signature
from resources.storage import open_store
from resources.storage.keys import KeyStore, open_key_store
from resources.vllm.runner import lora_rank_limit

LOAD_FORMAT = "modelpub"


class ServeError(ModelpubError):
    """A reference that cannot be served as it is: nothing was started or loaded."""


@dataclass(frozen=True)
class ServedAdapter:
    name: str  # what a request names as its model: the adapter's repo id
    reference: str
    path: Path  # the restored PEFT directory
    rank: int


@dataclass(frozen=True)
class ServePlan:
    """A verified version, ready for vLLM: its local config directory and its adapters."""

    record: ModelVersion
    model_dir: Path
    adapters: tuple[ServedAdapter, ...]

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": str(self.model_dir),
            "served_model_name": self.record.repo_id,
            "load_format": LOAD_FORMAT,
            "model_loader_extra_config": {"reference": self.record.reference},
            "dtype": self.record.dtype,
        }
        if self.record.tensor_parallel_size > 1:
            kwargs["tensor_parallel_size"] = self.record.tensor_parallel_size
        if self.adapters:
            kwargs.update(
                enable_lora=True,
                max_lora_rank=lora_rank_limit(max(a.rank for a in self.adapters)),
                max_loras=len(self.adapters),
            )
        return kwargs

    def server_argv(self, extra: list[str]) -> list[str]:
        """vLLM's OpenAI-compatible server for this plan, started as a module: the CPU
        wheel's `vllm` console script is broken, `python -m` works on every wheel."""
        import json

        kwargs = self.engine_kwargs()
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        argv += [
            "--model",
            kwargs.pop("model"),
            "--served-model-name",
            kwargs.pop("served_model_name"),
        ]
        argv += ["--model-loader-extra-config", json.dumps(kwargs.pop("model_loader_extra_config"))]
        if kwargs.pop("enable_lora", False):
            argv.append("--enable-lora")
            argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in self.adapters)]
        for name, value in kwargs.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        return argv + extra


def open_stores(settings: Settings) -> tuple[Registry, KeyStore]:
    """The registry and the key store the settings name."""
    registry = Registry(open_store(settings.store, settings.store_s3))
    return registry, open_key_store(settings.keys, settings.store, settings.keys_s3)


def _verified(registry: Registry, keys: KeyStore, record: VersionRecord) -> None:
    problem = verify_signature(registry, keys, record)
    if problem:
        raise ServeError(f"{record.reference}: {problem}; not serving it")


def _cache_dir(settings: Settings, record: VersionRecord) -> Path:
    return Path(settings.cache) / "serve" / record.repo_id.replace("/", "__") / record.suffix


def _cached(dest: Path, fill) -> Path:
    """`dest`, filled by `fill(tmp)` into a sibling and renamed into place whole; kept as
    it is when there (another server filled it first)."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        staged = Path(tmp) / "files"
        fill(staged)
        try:
            staged.rename(dest)
        except OSError as exc:
            if not dest.is_dir():  # else: lost the race, the winner's files are the same
                raise ServeError(f"cannot write the serve cache {dest}: {exc}") from None
    return dest


def _config_dir(settings: Settings, registry: Registry, record: ModelVersion) -> Path:
    """The version's config and tokenizer files, each checked against its recorded digest;
    a cached copy is checked again, since the cache is only a local directory."""
    prefix, _ = record.location
    dest = _cache_dir(settings, record) / "config"
    _cached(dest, lambda tmp: fetch_config(registry.store, prefix, record.files, tmp))
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        expected = record.files.get(str(path.relative_to(dest)))
        if expected is None or not digests.file_matches(path, expected):
            raise ServeError(
                f"{path} is not the file {record.reference} published; remove {dest} and "
                "serve again"
            )
    return dest


def adapters_for(registry: Registry, base: ModelVersion) -> list[AdapterVersion]:
    """The newest version of each adapter published against this base version."""
    newest: dict[str, AdapterVersion] = {}
    for repo_id in registry.repos():
        for record in registry.versions(repo_id):
            if (
                isinstance(record, AdapterVersion)
                and record.base_reference == base.reference
                and (
                    repo_id not in newest
                    or suffix_number(record.suffix) > suffix_number(newest[repo_id].suffix)
                )
            ):
                newest[repo_id] = record
    return [newest[r] for r in sorted(newest)]


def _restored(
    settings: Settings, registry: Registry, keys: KeyStore, record: AdapterVersion
) -> ServedAdapter:
    _verified(registry, keys, record)
    prefix, _ = record.location
    key = keys.get(record.key_id) if record.key_id else None
    path = _cached(
        _cache_dir(settings, record) / "peft",
        lambda tmp: restore_adapter(registry.store, prefix, record.files, record.key_id, key, tmp),
    )
    return ServedAdapter(record.repo_id, record.reference, path, record.rank)


def prepare(reference: str, settings: Settings | None = None) -> ServePlan:
    """Resolve and verify `reference` (repo_id[@alias|@vN]) and everything served with it."""
    settings = settings or Settings.from_env()
    registry, keys = open_stores(settings)
    record = registry.resolve(reference)
    if isinstance(record, AdapterVersion):
        raise ServeError(
            f"{record.reference} is an adapter; serve its base, {record.base_reference}, "
            "which attaches the adapters published for it"
        )
    if record.format != ArtifactFormat.name:  # vLLM's own format loads only with its loader
        raise ServeError(
            f"{record.reference} is in the {record.format} format, which the modelpub "
            f"loader does not read; serve it with the lines `modelpub serve-command "
            f"{record.reference}` prints"
        )
    _verified(registry, keys, record)
    model_dir = _config_dir(settings, registry, record)
    adapters = tuple(_restored(settings, registry, keys, a) for a in adapters_for(registry, record))
    return ServePlan(record, model_dir, adapters)


def vllm_kwargs(reference: str, settings: Settings | None = None) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM` that serve `reference`, verified:
    `LLM(**vllm_kwargs("org/model@prod"))`. Add engine options (max_model_len, ...) beside."""
    return prepare(reference, settings).engine_kwargs()


def published_tensors(
    reference: str, settings: Settings | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a pinned version (`repo_id@vN`), read from the store one at a time
    with tensorizer's hash verification, decrypted with the key store's key: what the
    modelpub loader feeds to the model inside the vLLM process."""
    settings = settings or Settings.from_env()
    registry, keys = open_stores(settings)
    record = registry.resolve(reference)
    prefix, tensors_file = record.location
    key = keys.get(record.key_id) if record.key_id else None
    uri = registry.store.uri(f"{prefix}/{tensors_file}")
    try:
        yield from tensorize.iter_deserialized(uri, key, stream_kwargs(registry.store))
    except Exception as exc:  # noqa: BLE001 - reported with what it means
        raise ServeError(tensorize.describe_load_error(exc, uri, record.key_id)) from None
