"""How serving code loads a published version: the `vllm serve` command line."""

from __future__ import annotations

import json
import shlex

from resources.store import LocalStore, ObjectStore
from resources.vllm_format import tensors_name


def serve_command(record: dict, store: ObjectStore, keyfile: str | None = None) -> str:
    """The shell lines that serve a version record with vLLM.

    vLLM 0.33 refuses an `s3://` directory as the model (vLLM #32807), so the model is
    always a local directory of config files and `tensorizer_uri` points at the tensors:
    for a sharded vLLM-tensorized version, a `%03d` template vLLM fills with each rank.
    """
    prefix = f"vllm/{record['repo_id']}/{record['suffix']}"
    parallel = record.get("tensor_parallel_size", 1)
    lines = []
    if record.get("format") == "vllm":
        gpus = f" with {parallel} GPUs" if parallel > 1 else ""
        lines.append(f"# vLLM-tensorized: loads on a CUDA host{gpus}, straight onto the GPU")
    if isinstance(store, LocalStore):
        model_dir = record["artifact_uri"]
    else:
        model_dir = f"./{record['repo_id'].replace('/', '__')}-{record['suffix']}"
        lines.append(f"modelpub fetch-config {record['repo_id']}@{record['suffix']} {model_dir}")
    extra = store.vllm_loader_options(f"{prefix}/{tensors_name(parallel)}", with_secrets=False)
    if record.get("encrypted"):
        extra["encryption_keyfile"] = keyfile or f"<key file for key id {record['key_id']}>"
    options = f"--load-format tensorizer --dtype {record['dtype']}"
    if parallel > 1:
        options += f" --tensor-parallel-size {parallel}"
    lines.append(
        f"vllm serve {shlex.quote(model_dir)} {options}"
        f" --model-loader-extra-config {shlex.quote(json.dumps(extra))}"
    )
    return "\n".join(lines)
