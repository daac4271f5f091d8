"""S3 (AWS, or any S3-compatible endpoint) as an object store, through boto3.

The registry's safety rests on two conditional writes that S3 now supports:
`PutObject` with `If-None-Match: *` (create exactly once) and with `If-Match: <etag>`
(compare-and-swap). Large files go up as multipart uploads, which become visible
whole or not at all.

Configuration is a store's `S3Env` (resources/settings.py): its `<PREFIX>_ENDPOINT_URL`,
`_REGION`, `_PROFILE`, `_ACCESS_KEY_ID`, `_SECRET_ACCESS_KEY` and `_SESSION_TOKEN`
variables (`MODELPUB_S3_*` for artifacts and the registry, `MODELPUB_KEYS_S3_*` for the
key store); anything unset falls back to boto3's own chain (`AWS_*` variables, `~/.aws`,
instance roles).
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from resources.settings import ARTIFACT_S3, S3Env
from resources.storage.digests import CHUNK
from resources.storage.store import NotFound, ObjectStore, S3Access, StoreError

# 64 MiB parts: 4 in flight measured fastest here, and 10,000 parts allow 640 GiB objects.
TRANSFER = TransferConfig(
    multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4
)
BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
DENIED = {"AccessDenied", "AllAccessDisabled", "403"}
ABSENT = {"NoSuchKey", "404", "NotFound"}
RETRIES = Config(retries={"max_attempts": 3, "mode": "standard"})
PART_ATTEMPTS = 4  # a streamed part is sent again after a transient error or a BadDigest


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"{uri!r} is not an s3://bucket[/prefix] URI")
    return parsed.netloc, parsed.path.strip("/")


class S3Store(ObjectStore):
    """Objects under `s3://bucket/prefix`, with the registry's conditional writes."""

    def __init__(self, bucket: str, prefix: str, s3: S3Env, env_prefix: str):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.env_prefix = env_prefix
        values = {name: setting.value for name, setting in s3.fields.items()}
        endpoint_url = values.pop("endpoint_url", None)
        self.session = boto3.session.Session(**values)
        self.client = self.session.client("s3", endpoint_url=endpoint_url, config=RETRIES)
        # Every write carries a checksum the server verifies (CRC32 by default, SHA-256 for
        # streamed parts), so the payload is not hashed again for the signature: boto3's
        # default over https, here over http too (a pass over every byte, on each side).
        config = self.client.meta.config
        config.s3 = {**(config.s3 or {}), "payload_signing_enabled": False}
        self.endpoint: str = self.client.meta.endpoint_url
        self.region: str = self.client.meta.region_name

    @classmethod
    def from_uri(cls, uri: str, s3: S3Env, env_prefix: str = ARTIFACT_S3) -> S3Store:
        """The store at `uri` configured by `s3`; `env_prefix` names the variables its
        errors tell the user to set."""
        bucket, prefix = parse_s3_uri(uri)
        return cls(bucket, prefix, s3, env_prefix)

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _credentials(self):
        """The resolved credentials, for clients that cannot take a boto3 client."""
        credentials = self.session.get_credentials()
        if credentials is None:
            raise StoreError(self._no_credentials())
        return credentials.get_frozen_credentials()

    def access_key(self) -> str:
        """The access key id this store signs with (its credentials resolved)."""
        return self._credentials().access_key

    def _no_credentials(self) -> str:
        p = self.env_prefix
        return (
            f"no S3 credentials for {self.uri('')}: set {p}_ACCESS_KEY_ID and "
            f"{p}_SECRET_ACCESS_KEY (or {p}_PROFILE, or the AWS_* variables)"
        )

    def _describe_failure(self, action: str, key: str, exc: Exception) -> StoreError:
        """Turn a boto error into what happened, to which URI, and what to set."""
        p, uri, where = self.env_prefix, self.uri(key), self.endpoint
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__
        if isinstance(exc, NoCredentialsError):
            return StoreError(self._no_credentials())
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return StoreError(
                f"cannot reach the S3 endpoint {where} to {action} {uri} ({exc}); check "
                f"{p}_ENDPOINT_URL (or AWS_ENDPOINT_URL) and that the server is up",
                transient=True,
            )
        if not isinstance(exc, ClientError):
            return StoreError(f"{action} {uri} at {where} failed: {exc}")
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ABSENT:
            return NotFound(f"{uri} does not exist")
        if code == "NoSuchBucket":
            return StoreError(
                f"bucket {self.bucket!r} does not exist at {where} (tried to {action} {uri}); "
                "create it, or point the store URI at an existing bucket"
            )
        if code in BAD_CREDENTIALS | DENIED:
            try:
                key_id = self.access_key()
            except StoreError:
                key_id = "(none)"
            problem = (
                "the credentials are wrong or expired"
                if code in BAD_CREDENTIALS
                else f"they lack permission on bucket {self.bucket!r}, or it does not exist"
            )
            return StoreError(
                f"{where} refused to {action} {uri} for access key {key_id!r} ({code}): "
                f"{problem}; set {p}_ACCESS_KEY_ID and {p}_SECRET_ACCESS_KEY (or "
                f"{p}_PROFILE, or the AWS_* variables)"
            )
        return StoreError(
            f"{action} {uri} at {where} failed: {code}: {exc}",
            transient=status >= 500 or code in ("SlowDown", "RequestTimeout"),
        )

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._describe_failure(action, key, exc) from exc

    def put_file(self, key: str, path: Path) -> None:
        with self._errors("upload", key):
            self.client.upload_file(str(path), self.bucket, self._full(key), Config=TRANSFER)

    def get_file(self, key: str, dest: Path) -> None:
        with self._errors("download", key):
            self.client.download_file(self.bucket, self._full(key), str(dest), Config=TRANSFER)

    def get_bytes(self, key: str) -> bytes:
        with self._errors("read", key):
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def part_sink(self, key: str) -> _Multipart:
        return _Multipart(self, key)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        with self._errors("read", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        return self._chunks(key, body)

    def _chunks(self, key: str, body) -> Iterator[bytes]:
        with self._errors("read", key), contextlib.closing(body):
            yield from body.iter_chunks(CHUNK)

    def open_read(self, key: str) -> BinaryIO:
        with self._errors("read", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        return _Body(self, key, body)

    def exists(self, key: str) -> bool:
        try:
            with self._errors("look up", key):
                self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        base = self._full(prefix).rstrip("/") + "/" if self._full(prefix) else ""
        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with self._errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return sorted(k.removeprefix(root) for k in keys)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """PutObject with a precondition; False when the precondition does not hold.

        AWS answers 409 ConditionalRequestConflict while a competing conditional write
        is in flight; that is retried, after which it becomes a plain 412 or success.
        """
        for attempt in range(5):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._full(key), Body=data, **condition
                )
                return True
            except ClientError as exc:
                code = _code(exc)
                if code == "PreconditionFailed" or code in ABSENT:  # ABSENT: If-Match, gone
                    return False
                if code != "ConditionalRequestConflict":
                    raise self._describe_failure("write", key, exc) from exc
            except BotoCoreError as exc:
                raise self._describe_failure("write", key, exc) from exc
            time.sleep(0.05 * (attempt + 1))
        return False

    def create(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            with self._errors("read", key):
                response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
                return response["Body"].read(), response["ETag"]
        except NotFound:
            return None

    def replace(self, key: str, data: bytes, tag: str) -> bool:
        return self._conditional_put(key, data, IfMatch=tag)

    def unfinished_uploads(self, prefix: str) -> list[str]:
        """Multipart uploads under `prefix` that were started and never completed or aborted."""
        return [key for key, _ in self._multipart_uploads(prefix)]

    def abort_upload(self, key: str) -> None:
        for found, upload_id in self._multipart_uploads(key, exact=True):
            with self._errors("abort an upload of", found):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._full(key), UploadId=upload_id
                )

    def _multipart_uploads(self, prefix: str, exact: bool = False) -> list[tuple[str, str]]:
        """(key, upload id) of uploads under `prefix`, or of the key `prefix` if `exact`."""
        root = f"{self.prefix}/" if self.prefix else ""
        full = self._full(prefix) if exact else self._full(prefix).rstrip("/") + "/"
        found = []
        with self._errors("list unfinished uploads under", prefix):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                found += [
                    (u["Key"].removeprefix(root), u["UploadId"])
                    for u in page.get("Uploads", [])
                    if not exact or u["Key"] == full
                ]
        return sorted(found)

    def s3_access(self, with_credentials: bool = True) -> S3Access:
        access = S3Access(endpoint=self.endpoint, region=self.region, env_prefix=self.env_prefix)
        if not with_credentials:
            return access
        credentials = self._credentials()
        return replace(
            access,
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            session_token=credentials.token,
        )


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


class _Multipart:
    """A streamed file's multipart upload. Each part carries its SHA-256, which the server
    checks: a part damaged on the way is refused (BadDigest) and sent again."""

    def __init__(self, store: S3Store, key: str):
        self.store, self.key = store, key
        self.parts: dict[int, tuple[str, str]] = {}  # number -> (etag, checksum)
        self._lock = threading.Lock()
        with store._errors("start an upload of", key):
            self.upload_id = store.client.create_multipart_upload(
                Bucket=store.bucket, Key=store._full(key), ChecksumAlgorithm="SHA256"
            )["UploadId"]

    def upload(self, number: int, data: bytes, sha256: bytes) -> None:
        checksum = base64.b64encode(sha256).decode()
        for attempt in range(PART_ATTEMPTS):
            try:
                response = self.store.client.upload_part(
                    Bucket=self.store.bucket,
                    Key=self.store._full(self.key),
                    UploadId=self.upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumSHA256=checksum,
                )
                break
            except (BotoCoreError, ClientError) as exc:
                error = self.store._describe_failure("upload a part of", self.key, exc)
                code = _code(exc) if isinstance(exc, ClientError) else None
                if attempt + 1 == PART_ATTEMPTS or not (error.transient or code == "BadDigest"):
                    raise error from exc
                time.sleep(0.5 * 2**attempt)
        with self._lock:
            self.parts[number] = (response["ETag"], response.get("ChecksumSHA256", checksum))

    def complete(self, count: int) -> None:
        if sorted(self.parts) != list(range(1, count + 1)):
            raise StoreError(f"{self.store.uri(self.key)}: not every part was uploaded")
        parts = [
            {"PartNumber": n, "ETag": etag, "ChecksumSHA256": checksum}
            for n, (etag, checksum) in sorted(self.parts.items())
        ]
        with self.store._errors("complete the upload of", self.key):
            self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.store._full(self.key),
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # best effort: gc lists what is left
            self.store.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.store._full(self.key), UploadId=self.upload_id
            )


class _Body(io.RawIOBase):
    """An object's body read in order, a failure of the read said as the store says it."""

    def __init__(self, store: S3Store, key: str, body):
        super().__init__()
        self._store, self._key, self._body = store, key, body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._store._errors("read", self._key):
            return self._body.readinto(buffer)

    def close(self) -> None:
        self._body.close()
        super().close()
