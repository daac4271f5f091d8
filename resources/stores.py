"""The artifact store, registry and key store that `Settings` name, opened from them."""

from __future__ import annotations

from resources.registry.registry import Registry
from resources.settings import Settings
from resources.storage import open_store
from resources.storage.keys import KeyStore, open_key_store
from resources.storage.store import ObjectStore


def artifact_store(settings: Settings) -> ObjectStore:
    return open_store(settings.store, settings.store_s3)


def key_store(settings: Settings) -> KeyStore:
    """The key store, kept apart from the artifact store (a key inside it is refused)."""
    return open_key_store(settings.keys, settings.store, settings.keys_s3)


def open_registry(settings: Settings) -> Registry:
    """The registry, kept in the artifact store."""
    return Registry(artifact_store(settings))


def open_stores(settings: Settings) -> tuple[Registry, KeyStore]:
    """The registry and the key store."""
    return open_registry(settings), key_store(settings)
