"""The domain library: plain classes and functions that never import Dagster.

    settings, catalog, errors, layout  the environment, what to publish, the error base,
                                       where everything lives in the store
    stores      the artifact store, registry and key store that Settings name
    storage/    bytes: a local directory or S3 (whole files, or parts as they are ready),
                the key store, digests
    formats/    published artifacts: tensorizer I/O and its streamed writes, HF-tensorized,
                PEFT LoRA, checked reads
    registry/   version records, aliases, reservations, staging and publishing, signing, gc
    sources/    hubs (Hugging Face, git mirrors) and watching their refs
    vllm/       vLLM engines: the runner, the engine host, the vLLM-tensorized format, plugin
    validation/ round-trip checks, integrity, Great Expectations
    serving/    a published version into vLLM: prepare, the `modelpub` loader, `vllm serve`
    operations/ doctor and the one-line summaries

The Dagster resources over these live beside the assets (assets/dagster_resources.py);
an import contract (pyproject.toml) keeps Dagster out of this package.
"""
