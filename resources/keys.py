"""Encryption keys, kept apart from the artifacts they open.

vLLM's example writes the key file next to the tensors; here whoever can read the
artifact bucket must not thereby be able to read the model, so keys live in their
own store (a 0600 directory, or an S3 bucket/prefix with its own credentials) and
the registry records only a key id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resources.store import LocalStore, NotFound, ObjectStore, open_store


class KeyStoreError(RuntimeError):
    pass


class KeyStore:
    def __init__(self, store: ObjectStore):
        self.store = store

    @staticmethod
    def _key(key_id: str) -> str:
        return f"{key_id}.key"

    def create(self, key_id: str) -> bytes:
        """A fresh random key under a new id; never replaces an existing key."""
        from tensorizer import EncryptionParams

        key = EncryptionParams.random().key
        if not self.store.create(self._key(key_id), key):
            raise KeyStoreError(f"key {key_id!r} already exists; key ids are never reused")
        return key

    def get(self, key_id: str) -> bytes:
        try:
            return self.store.get_bytes(self._key(key_id))
        except NotFound:
            raise KeyStoreError(
                f"key {key_id!r} is not in the key store {self.store.uri('')}; without it the "
                "artifact cannot be decrypted (check MODELPUB_KEYS)"
            ) from None

    @contextmanager
    def keyfile(self, key_id: str) -> Iterator[Path]:
        """A 0600 local file holding the key, for vLLM's `encryption_keyfile`."""
        try:
            with self.store.local_copy(self._key(key_id)) as path:
                path.chmod(0o600)
                yield path
        except NotFound:
            self.get(key_id)  # raises the explanatory error
            raise


def open_key_store(uri: str, artifact_store_uri: str) -> KeyStore:
    """The key store at `uri`, refused if it sits inside the artifact store."""
    a, k = artifact_store_uri.rstrip("/") + "/", uri.rstrip("/") + "/"
    if not uri.startswith("s3://"):
        a = str(Path(artifact_store_uri).resolve()) + "/" if "://" not in a else a
        k = str(Path(uri).resolve()) + "/"
    if k.startswith(a) or a.startswith(k):
        raise KeyStoreError(
            f"the key store {uri} overlaps the artifact store {artifact_store_uri}: keys must "
            "never sit beside the artifacts they open; set MODELPUB_KEYS elsewhere"
        )
    if uri.startswith("s3://"):
        return KeyStore(open_store(uri))
    root = Path(uri)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    return KeyStore(LocalStore(root, file_mode=0o600))
