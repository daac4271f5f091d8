"""Great Expectations suites over the round-trip comparison tables.

The tensor and generation checks produce tables (one row per tensor, one per prompt);
GX states what a good publish looks like over them, and its result is recorded with
the version so the evidence outlives the run.
"""

from __future__ import annotations

import logging

import pandas as pd


def _suites(tolerance: float, tensor_count: int, adapter: bool, against_source: bool):
    import great_expectations.expectations as gxe

    tensors = [
        gxe.ExpectTableRowCountToEqual(value=tensor_count),
        gxe.ExpectColumnValuesToNotBeNull(column="published_dtype"),
        gxe.ExpectColumnValuesToBeInSet(column="equal", value_set=[True]),
    ]
    if against_source:
        tensors.append(
            gxe.ExpectColumnPairValuesToBeEqual(column_A="source_dtype", column_B="published_dtype")
        )
    generations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="tokens_equal", value_set=[True]),
        gxe.ExpectColumnMaxToBeBetween(column="max_abs_logprob_diff", max_value=tolerance),
        gxe.ExpectColumnValuesToBeBetween(column="tokens", min_value=1),
    ]
    if adapter:  # proof that the adapter is applied, not silently dropped
        generations.append(
            gxe.ExpectColumnDistinctValuesToContainSet(column="differs_from_base", value_set=[True])
        )
    return {"tensors": tensors, "generations": generations}


def run_expectations(
    tensor_rows: list[dict],
    generation_rows: list[dict],
    tolerance: float,
    tensor_count: int,
    adapter: bool = False,
    against_source: bool = True,
) -> dict:
    """Validate both tables; returns {"success", "results": [{table, expectation, success}]}.

    For an adapter, at least one prompt must also come out differently from the base's.
    Without a source to compare with (the vLLM-tensorized format), dtypes are not paired.
    """
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # a bar per metric
    source = context.data_sources.add_pandas("roundtrip")
    tables = {"tensors": pd.DataFrame(tensor_rows), "generations": pd.DataFrame(generation_rows)}
    results = []
    for table, expectations in _suites(tolerance, tensor_count, adapter, against_source).items():
        asset = source.add_dataframe_asset(table)
        batch = asset.add_batch_definition_whole_dataframe(table).get_batch(
            batch_parameters={"dataframe": tables[table]}
        )
        suite = gx.ExpectationSuite(name=f"modelpub_{table}", expectations=expectations)
        outcome = batch.validate(suite)
        for r in outcome.results:
            results.append(
                {
                    "table": table,
                    "expectation": r.expectation_config.type,
                    "column": r.expectation_config.kwargs.get("column", ""),
                    "success": bool(r.success),
                }
            )
    return {"success": all(r["success"] for r in results), "results": results}
