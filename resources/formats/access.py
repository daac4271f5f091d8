"""How tensorizer's stream reader and vLLM's tensorizer loader reach a store's tensors.

The stores only say where they are and with which credentials (`ObjectStore.s3_access`);
what tensorizer and vLLM want to be told is known here, not in the transport.
"""

from __future__ import annotations

from typing import Any

from resources.storage.store import ObjectStore, S3Access, StoreError


def _long_lived(store: ObjectStore, access: S3Access) -> S3Access:
    """tensorizer's S3 reader signs URLs for curl and cannot send a session token."""
    if access.session_token:
        raise StoreError(
            f"tensorizer cannot read {store.uri('')} with temporary (session-token) "
            f"credentials; set {access.env_prefix}_ACCESS_KEY_ID and "
            f"{access.env_prefix}_SECRET_ACCESS_KEY to long-lived keys"
        )
    return access


def _plain_http(access: S3Access) -> dict[str, Any]:
    """tensorizer refuses http:// endpoints unless told to (`force_http`)."""
    return {"force_http": True} if access.endpoint.startswith("http://") else {}


def stream_kwargs(store: ObjectStore) -> dict[str, Any]:
    """Keyword arguments for tensorizer's `open_stream` on this store's URIs."""
    access = store.s3_access()
    if access is None:
        return {}
    access = _long_lived(store, access)
    return {
        "s3_endpoint": access.endpoint,
        "s3_access_key_id": access.access_key,
        "s3_secret_access_key": access.secret_key,
        "s3_region_name": access.region,
        **_plain_http(access),
    }


def vllm_loader_options(store: ObjectStore, key: str, with_secrets: bool) -> dict[str, Any]:
    """`model_loader_extra_config` entries for vLLM to read `key` with tensorizer; without
    secrets, for printing.

    vLLM passes `s3_*` and `stream_kwargs` on to tensorizer's `open_stream`. vLLM 0.32 does
    not fill the stream's credentials from its S3_* variables, so a printed command without
    secrets relies on tensorizer's `~/.s3cfg` fallback.
    """
    options: dict[str, Any] = {"tensorizer_uri": store.uri(key)}
    access = store.s3_access(with_credentials=with_secrets)
    if access is None:
        return options
    options["s3_endpoint"] = access.endpoint
    if with_secrets:
        access = _long_lived(store, access)
        options["s3_access_key_id"] = access.access_key
        options["s3_secret_access_key"] = access.secret_key
    options["stream_kwargs"] = {"s3_region_name": access.region, **_plain_http(access)}
    return options
