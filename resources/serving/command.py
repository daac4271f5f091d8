"""How serving code loads a published version: the `vllm serve` command line."""

from __future__ import annotations

import json
import shlex

from resources.formats.access import vllm_loader_options
from resources.formats.format import artifact_format
from resources.registry.records import AdapterVersion, VersionRecord
from resources.storage.store import LocalStore, ObjectStore
from resources.vllm.runner import lora_rank_limit


def serve_command(record: VersionRecord, store: ObjectStore, keyfile: str | None = None) -> str:
    """The shell lines that serve a version record with vLLM.

    vLLM 0.33 refuses an `s3://` directory as the model (vLLM #32807), so the model is
    always a local directory of config files and `tensorizer_uri` points at the tensors:
    for a sharded vLLM-tensorized version, a `%03d` template vLLM fills with each rank.
    """
    prefix, tensors_file = record.location
    parallel = record.tensor_parallel_size
    lines = []
    note = artifact_format(record.format).serve_note(parallel)
    if note:
        lines.append(note)
    if isinstance(store, LocalStore):
        model_dir = record.artifact_uri
    else:
        model_dir = _local_dir(record)
        lines.append(f"modelpub fetch-config {record.reference} {model_dir}")
    extra = vllm_loader_options(store, f"{prefix}/{tensors_file}", with_secrets=False)
    if record.encrypted:
        extra["encryption_keyfile"] = keyfile or f"<key file for key id {record.key_id}>"
    options = f"--load-format tensorizer --dtype {record.dtype}"
    if parallel > 1:
        options += f" --tensor-parallel-size {parallel}"
    lines.append(
        f"vllm serve {shlex.quote(model_dir)} {options}"
        f" --model-loader-extra-config {shlex.quote(json.dumps(extra))}"
    )
    return "\n".join(lines)


def adapter_serve_command(
    record: AdapterVersion,
    base_record: VersionRecord,
    store: ObjectStore,
    base_keyfile: str | None = None,
) -> str:
    """The shell lines that serve an adapter version on the base version it was checked with.

    vLLM 0.32+ reads adapters only as local PEFT directories, so the first line restores
    it there (decrypting it); the adapter is then requested by its repo id as the model.
    """
    adapter_dir = _local_dir(record)
    lora = f"{record.repo_id}={adapter_dir}"
    return (
        f"modelpub fetch-adapter {record.reference} {adapter_dir}\n"
        f"{serve_command(base_record, store, keyfile=base_keyfile)}"
        f" --enable-lora --max-lora-rank {lora_rank_limit(record.rank)}"
        f" --lora-modules {shlex.quote(lora)}"
    )


def _local_dir(record: VersionRecord) -> str:
    """Where the printed commands put a version's files on the serving host."""
    return f"./{record.repo_id.replace('/', '__')}-{record.suffix}"
