"""Where bytes live: a local directory or S3 (`store`, `s3`), and the key store (`keys`)."""

from __future__ import annotations

from resources.settings import NO_S3, S3Env
from resources.storage.store import LocalStore, ObjectStore


def open_store(uri: str, s3: S3Env = NO_S3) -> ObjectStore:
    """`s3://bucket/prefix` for S3, anything else is a local directory.

    S3 is configured by `s3` (the settings' `store_s3`; by default nothing, which leaves
    boto3's own chain).
    """
    if uri.startswith("s3://"):
        from resources.storage.s3 import S3Store

        return S3Store.from_uri(uri, s3)
    return LocalStore(uri)
