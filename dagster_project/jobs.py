"""Jobs over the model and adapter assets."""

from dagster import AssetSelection, define_asset_job

from assets.adapters import adapter_snapshot, published_adapter, tensorized_adapter
from assets.models import model_snapshot, published_version, tensorized_model

publish_model_job = define_asset_job(
    "publish_model",
    selection=AssetSelection.assets(model_snapshot, tensorized_model, published_version),
    description="Pull a catalog entry at a pinned sha, tensorize and encrypt it, prove the "
    "round trip with vLLM, and publish it under a new suffix.",
)

publish_adapter_job = define_asset_job(
    "publish_adapter",
    selection=AssetSelection.assets(adapter_snapshot, tensorized_adapter, published_adapter),
    description="Pull a catalog adapter at a pinned sha, check it fits its base model's "
    "latest published version, tensorize and encrypt it, prove with vLLM that the restored "
    "adapter reproduces the original (and changes the base's outputs), and publish it.",
)
