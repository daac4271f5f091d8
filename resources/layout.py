"""Where everything lives in the object store: the one module that names keys.

    vllm/<repo>/<suffix>/                                   a model version's files
    vllm/<repo>/<suffix>/model.tensors                      its tensors (one rank)
    vllm/<repo>/<suffix>/model-rank-000.tensors ...         or one file per rank
    vllm/<base>/<base suffix>/adapters/<adapter>/<suffix>/  an adapter version's files
    registry/<repo>/reservations/<suffix>.json              a suffix taken by a run
    registry/<repo>/versions/<suffix>.json                  a published version
    registry/<repo>/aliases/<alias>.json                    latest, stable, ...
    registry/<repo>/signatures/<suffix>.sigstore.json       a version's signature bundle
    registry/_signing/<fingerprint>.pem                     a public key versions are signed with
    validation/<repo>/<suffix>/<run id>.json                a run's round-trip report

The key store holds the encryption keys (`<key id>.key`) and the signing key
(`signing/modelpub.pem`; keys rotated out and still trusted under `signing/retired/`).

Repo ids are always `org/name` (the catalog refuses anything else), so every key has a
fixed number of segments before the suffix and no repo id can be read as another's
path: `acme/v2` at v1 is `vllm/acme/v2/v1/`, never `acme` at v2.
"""

from __future__ import annotations

import re

ARTIFACTS = "vllm"
REGISTRY = "registry"
VALIDATION = "validation"

SUFFIX = re.compile(r"^v(\d+)$")
TENSORS_FILE = "model.tensors"
RANK_TEMPLATE = "model-rank-%03d.tensors"
ADAPTER_TENSORS_FILE = "adapter_model.tensors"  # the name vLLM's own LoRA tensorizing used
RECORD_KINDS = ("reservations", "versions", "aliases")
SIGNING_KEY = "signing/modelpub.pem"  # in the key store: the key new versions are signed with


def model_prefix(repo_id: str, suffix: str) -> str:
    """Where a model version's files live, as vLLM's tensorize script lays them out."""
    return f"{ARTIFACTS}/{repo_id}/{suffix}"


def adapter_prefix(base_repo_id: str, base_suffix: str, repo_id: str, suffix: str) -> str:
    """Where an adapter version's files live: under the base version it was checked with."""
    return f"{model_prefix(base_repo_id, base_suffix)}/adapters/{repo_id}/{suffix}"


def tensors_name(tensor_parallel_size: int) -> str:
    """The tensors file name vLLM's `tensorizer_uri` takes: a per-rank template when sharded."""
    return TENSORS_FILE if tensor_parallel_size == 1 else RANK_TEMPLATE


def registry_key(repo_id: str, kind: str, name: str) -> str:
    """`registry/<repo>/<kind>/<name>.json`, kind one of RECORD_KINDS."""
    return f"{REGISTRY}/{repo_id}/{kind}/{name}.json"


def alias_key(repo_id: str, alias: str) -> str:
    """An alias: its target, its protection and its whole history, in one object."""
    return registry_key(repo_id, "aliases", alias)


def registry_dir(repo_id: str, kind: str) -> str:
    return f"{REGISTRY}/{repo_id}/{kind}"


def parse_registry_key(key: str) -> tuple[str, str, str] | None:
    """(repo id, kind, name) of a `registry/org/name/<kind>/<name>.json` key, else None.

    Split by position, not by searching for `/versions/`: `acme/versions` is a valid id.
    """
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != REGISTRY or parts[3] not in RECORD_KINDS:
        return None
    if not parts[4].endswith(".json"):
        return None
    return f"{parts[1]}/{parts[2]}", parts[3], parts[4].removesuffix(".json")


def validation_dir(repo_id: str, suffix: str) -> str:
    return f"{VALIDATION}/{repo_id}/{suffix}"


def validation_key(repo_id: str, suffix: str, run_id: str) -> str:
    """Where a run's round-trip report for a version is kept (the record links to it)."""
    return f"{validation_dir(repo_id, suffix)}/{run_id}.json"


def key_file(key_id: str) -> str:
    """The key store object holding the encryption key `key_id`."""
    return f"{key_id}.key"


def retired_signing_key(fingerprint: str) -> str:
    """The key store object an operator keeps a rotated-out signing key (or its public half)
    under, so that the versions it signed still verify."""
    return f"signing/retired/{fingerprint}.pem"


def public_key(fingerprint: str) -> str:
    """Where a signing key's public half is published: one file per key, named by its
    fingerprint (`_signing` is no org: repo ids start with a letter or digit)."""
    return f"{REGISTRY}/_signing/{fingerprint}.pem"


def signature_key(repo_id: str, suffix: str) -> str:
    """A version's signature bundle, beside its record."""
    return f"{REGISTRY}/{repo_id}/signatures/{suffix}.sigstore.json"
