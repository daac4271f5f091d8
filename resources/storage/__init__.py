"""Where bytes live: a local directory or S3 (`store`, `s3`), and the key store (`keys`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resources.settings import NO_S3, S3Env
from resources.storage.store import LocalStore, ObjectStore

if TYPE_CHECKING:
    from dagster_aws.s3 import S3Resource


def open_store(uri: str, s3: S3Env = NO_S3, resource: S3Resource | None = None) -> ObjectStore:
    """`s3://bucket/prefix` for S3, anything else is a local directory.

    S3 is configured by `s3` (the settings' `store_s3`; by default nothing, which leaves
    boto3's own chain), or by `resource` where a Dagster resource built one from it.
    """
    if uri.startswith("s3://"):
        from resources.storage.s3 import S3Store

        return S3Store.from_uri(uri, s3, resource)
    return LocalStore(uri)
