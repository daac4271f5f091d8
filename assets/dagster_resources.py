"""Dagster resources: thin configurable handles on the plain classes of `resources`.

S3 settings travel as dagster-aws `S3Resource`s so the UI shows them, secrets as the
names of their variables (`EnvVar`, resolved in the run); the stores take them back as a
plain `S3Env`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from dagster_aws.s3 import S3Resource

from resources.catalog import Catalog, HubSpec, load_catalog
from resources.registry.registry import Registry
from resources.settings import NO_S3, S3_FIELDS, EnvValue, S3Env
from resources.sources.hub import Hub, make_hub
from resources.storage import open_store
from resources.storage.keys import KeyStore, open_key_store
from resources.storage.store import ObjectStore
from resources.vllm import runner as vllm_runner

SECRET_FIELDS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}


def s3_resource(uri: str, s3: S3Env) -> S3Resource | None:
    """The `S3Resource` a store's Dagster resource holds: None unless `uri` is s3://."""
    if not uri.startswith("s3://"):
        return None
    values = {
        name: EnvVar(setting.name) if name in SECRET_FIELDS else setting.value
        for name, setting in s3.fields.items()
    }
    return S3Resource(**values)


def s3_env(resource: S3Resource | None) -> S3Env:
    """The plain settings a store opens with, from a resource whose secrets Dagster has
    resolved in this run."""
    if resource is None:
        return NO_S3
    fields = {n: EnvValue(n, v) for n in S3_FIELDS if (v := getattr(resource, n, None))}
    return S3Env(fields)


class CatalogResource(ConfigurableResource):
    """The catalog file; read at each use so an edit applies to the next run."""

    path: str

    def load(self) -> Catalog:
        return load_catalog(self.path)


class HubResource(ConfigurableResource):
    """Hubs named in the catalog, and the local cache of fetched snapshots."""

    cache_dir: str
    hf_endpoint: str | None = None  # HF_ENDPOINT: for hubs that name no endpoint
    hf_token: str | None = None  # HF_TOKEN: for hubs whose token variable is unset

    def hub(self, spec: HubSpec) -> Hub:
        from resources.settings import hub_token

        token = hub_token(spec.token_env, self.hf_token)
        endpoint = spec.endpoint or self.hf_endpoint
        return make_hub(spec.kind, root=spec.root, endpoint=endpoint, token=token)

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir)


class ObjectStoreResource(ConfigurableResource):
    """Artifacts and the registry: a local directory or `s3://bucket/prefix`."""

    uri: str
    s3: S3Resource | None = None  # endpoint and credentials for an s3:// uri

    def open(self) -> ObjectStore:
        return open_store(self.uri, s3_env(self.s3))


class KeyStoreResource(ConfigurableResource):
    """Encryption keys, in a place separate from the artifact store."""

    uri: str
    artifact_store_uri: str
    s3: S3Resource | None = None  # the key store's own endpoint and credentials

    def open(self) -> KeyStore:
        return open_key_store(self.uri, self.artifact_store_uri, s3_env(self.s3))


class RegistryResource(ConfigurableResource):
    store: ObjectStoreResource

    def open(self) -> Registry:
        return Registry(self.store.open())


class TensorizerResource(ConfigurableResource):
    """Where serialization stages its files before upload."""

    staging_dir: str

    @contextmanager
    def staging(self, run_id: str) -> Iterator[Path]:
        """The run's staging directory, removed after once empty (each write stages in a
        directory of its own inside it, which it removes)."""
        path = Path(self.staging_dir) / run_id
        path.mkdir(parents=True, exist_ok=True)
        try:
            yield path
        finally:
            with suppress(OSError):  # another attempt of the run still uses it
                path.rmdir()


class VllmResource(ConfigurableResource):
    """Runs vLLM engines for the round-trip comparison."""

    timeout_s: int = 900

    def generate(self, spec: vllm_runner.GenerationSpec) -> dict:
        return vllm_runner.generate(spec, timeout_s=self.timeout_s)
