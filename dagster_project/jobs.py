"""Jobs over the model and adapter assets."""

from dagster import AssetSelection, define_asset_job

from assets.adapters import adapter_snapshot, published_adapter, tensorized_adapter
from assets.checks import roundtrip_checks
from assets.models import model_snapshot, published_version, tensorized_model
from assets.state import PARTITION_TAG, VERIFY_TAG

publish_model_job = define_asset_job(
    "publish_model",
    selection=AssetSelection.assets(model_snapshot, tensorized_model, published_version),
    description="Pull a catalog entry at a pinned sha, tensorize and encrypt it, prove the "
    "round trip with vLLM, and publish it under a new suffix.",
)

reverify_model_job = define_asset_job(
    "reverify_model",
    selection=AssetSelection.checks(roundtrip_checks),
    description="Re-run the round-trip checks on a published version named by the run tag "
    f"`{VERIFY_TAG}` (a suffix such as v3; required, so that it never checks what a "
    "concurrent publish run is staging): "
    "load it from the store, compare it with its source commit, and record the results as "
    "asset check evaluations. Publishes nothing and moves no alias. Dagster 1.13 gives a "
    f"checks-only job no partitions, so a run names its entry with the `{PARTITION_TAG}` tag.",
)

publish_adapter_job = define_asset_job(
    "publish_adapter",
    selection=AssetSelection.assets(adapter_snapshot, tensorized_adapter, published_adapter),
    description="Pull a catalog adapter at a pinned sha, check it fits its base model's "
    "latest published version, tensorize and encrypt it, prove with vLLM that the restored "
    "adapter reproduces the original (and changes the base's outputs), and publish it.",
)
