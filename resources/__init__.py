"""The domain library, by concern, and the Dagster resources over it.

    catalog, records, layout, errors   the schema, typed records, store keys, error base
    storage/    bytes: a local directory or S3, and the key store
    registry, gc                       version records, aliases, reservations; cleanup
    sources/    hubs (Hugging Face, git mirrors) and watching their refs
    tensorize   tensorizer I/O (serialize, encrypt, deserialize, verify)
    formats/    writing and restoring published artifacts (HF-tensorized, PEFT LoRA)
    vllm/       vLLM: the engine runner, the vLLM-tensorized format, the plugin, serving
    validation/ round-trip checks, integrity, Great Expectations
    dagster_resources  one ConfigurableResource per external system (re-exported here)

The resources are re-exported lazily, so that importing a domain module (as the
read-only CLI commands do) does not import Dagster's resource machinery with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resources.dagster_resources import (
        CatalogResource,
        HubResource,
        KeyStoreResource,
        ObjectStoreResource,
        RegistryResource,
        TensorizerResource,
        VllmResource,
    )

__all__ = [
    "CatalogResource",
    "HubResource",
    "KeyStoreResource",
    "ObjectStoreResource",
    "RegistryResource",
    "TensorizerResource",
    "VllmResource",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from resources import dagster_resources

        return getattr(dagster_resources, name)
    raise AttributeError(f"module 'resources' has no attribute {name!r}")
