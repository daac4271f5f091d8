"""Where bytes live: a local directory or S3 (`store`, `s3`), and the key store (`keys`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resources.storage.store import LocalStore, ObjectStore

if TYPE_CHECKING:
    from dagster_aws.s3 import S3Resource


def open_store(uri: str, s3: S3Resource | None = None) -> ObjectStore:
    """`s3://bucket/prefix` for S3 (configured by `s3`, else from the environment),
    anything else is a local directory."""
    if uri.startswith("s3://"):
        from resources.storage.s3 import S3Store

        return S3Store.from_uri(uri, resource=s3)
    return LocalStore(uri)
