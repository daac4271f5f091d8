"""Encryption keys, kept apart from the artifacts they open.

vLLM's example writes the key file next to the tensors; here whoever can read the
artifact bucket must not thereby be able to read the model, so keys live in their
own store (a 0600 directory, or an S3 bucket/prefix with its own credentials) and
the registry records only a key id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from resources.errors import ModelpubError
from resources.layout import SIGNING_KEY, key_file
from resources.settings import KEYS_S3, NO_S3, S3Env
from resources.storage.store import LocalStore, NotFound, ObjectStore

KEY_BYTES = 32  # an XSalsa20-Poly1305 key, what tensorizer's EncryptionParams make


class KeyStoreError(ModelpubError):
    pass


class KeyStore:
    def __init__(self, store: ObjectStore):
        self.store = store

    @staticmethod
    def _key(key_id: str) -> str:
        return key_file(key_id)

    def create(self, key_id: str) -> bytes:
        """A fresh random key under a new id; never replaces an existing key."""
        from tensorizer import EncryptionParams

        key = EncryptionParams.random().key
        if not self.store.create(self._key(key_id), key):
            raise KeyStoreError(f"key {key_id!r} already exists; key ids are never reused")
        return key

    def exists(self, key_id: str) -> bool:
        return self.store.exists(self._key(key_id))

    def delete(self, key_id: str) -> None:
        self.store.delete(self._key(key_id))

    def get(self, key_id: str) -> bytes:
        try:
            key = self.store.get_bytes(self._key(key_id))
        except NotFound:
            raise KeyStoreError(
                f"key {key_id!r} is not in the key store {self.store.uri('')}; without it the "
                "artifact cannot be decrypted (check MODELPUB_KEYS)"
            ) from None
        if len(key) != KEY_BYTES:  # cut short or overwritten: no key tensorizer could use
            raise KeyStoreError(
                f"key {key_id!r} in the key store {self.store.uri('')} is {len(key)} bytes, not "
                f"{KEY_BYTES}: the key store is damaged; restore the key from its backup"
            )
        return key

    def signing_key(self, make: Callable[[], bytes]) -> bytes:
        """The key versions are signed with, made by `make` on first use. Created once and
        read back, so two first publishes at once both sign with the one stored first."""
        try:
            return self.store.get_bytes(SIGNING_KEY)
        except NotFound:
            self.store.create(SIGNING_KEY, make())
            return self.store.get_bytes(SIGNING_KEY)

    def read(self, name: str) -> bytes | None:
        """A key store object other than an encryption key (the signing keys), or None."""
        try:
            return self.store.get_bytes(name)
        except NotFound:
            return None

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


def _overlaps(uri: str, artifact_store_uri: str) -> bool:
    """Does one store contain the other? s3:// URIs compare bucket and prefix (on `/`
    boundaries), local paths compare resolved directories."""

    def normal(u: str) -> str:
        return u.rstrip("/") + "/" if "://" in u else str(Path(u).resolve()) + "/"

    k, a = normal(uri), normal(artifact_store_uri)
    return k.startswith(a) or a.startswith(k)


def open_key_store(uri: str, artifact_store_uri: str, s3: S3Env = NO_S3) -> KeyStore:
    """The key store at `uri`, refused if it sits inside the artifact store.

    An s3:// key store is configured by `s3` (the settings' `keys_s3`, whose credentials
    are never the artifact store's): whoever holds only the artifact credentials cannot
    read the keys.
    """
    if _overlaps(uri, artifact_store_uri):
        raise KeyStoreError(
            f"the key store {uri} overlaps the artifact store {artifact_store_uri}: keys must "
            "never sit beside the artifacts they open; set MODELPUB_KEYS elsewhere"
        )
    if uri.startswith("s3://"):
        from resources.storage.s3 import S3Store

        return KeyStore(S3Store.from_uri(uri, s3, env_prefix=KEYS_S3))
    root = Path(uri)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    return KeyStore(LocalStore(root, file_mode=0o600))
