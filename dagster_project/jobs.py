"""Jobs over the model and adapter assets."""

from dagster import AssetSelection, define_asset_job

from assets.publish_jobs import ADAPTER_JOB, MODEL_JOB
from assets.state import PARTITION_TAG, VERIFY_TAG

publish_model_job = define_asset_job(
    MODEL_JOB.name,
    selection=AssetSelection.assets(*MODEL_JOB.steps),
    description="Pull a catalog entry at a pinned sha, tensorize and encrypt it, prove the "
    "round trip with vLLM, and publish it under a new suffix.",
)

reverify_model_job = define_asset_job(
    "reverify_model",
    selection=AssetSelection.checks_for_assets(MODEL_JOB.serialize),
    description="Re-run the round-trip checks on a published version named by the run tag "
    f"`{VERIFY_TAG}` (a suffix such as v3; required, so that it never checks what a "
    "concurrent publish run is staging): "
    "load it from the store, compare it with its source commit, and record the results as "
    "asset check evaluations. Publishes nothing and moves no alias. Dagster 1.13 gives a "
    f"checks-only job no partitions, so a run names its entry with the `{PARTITION_TAG}` tag.",
)

publish_adapter_job = define_asset_job(
    ADAPTER_JOB.name,
    selection=AssetSelection.assets(*ADAPTER_JOB.steps),
    description="Pull a catalog adapter at a pinned sha, check it fits its base model's "
    "latest published version, tensorize and encrypt it, prove with vLLM that the restored "
    "adapter reproduces the original (and changes the base's outputs), and publish it.",
)
