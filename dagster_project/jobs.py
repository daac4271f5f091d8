"""Jobs over the model assets."""

from dagster import AssetSelection, define_asset_job

from assets.models import model_snapshot, published_version, tensorized_model

publish_model_job = define_asset_job(
    "publish_model",
    selection=AssetSelection.assets(model_snapshot, tensorized_model, published_version),
    description="Pull a catalog entry at a pinned sha, tensorize and encrypt it, prove the "
    "round trip with vLLM, and publish it under a new suffix.",
)
