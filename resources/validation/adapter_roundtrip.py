"""Round-trip validation of a published LoRA adapter, on its published base model.

The adapter is restored the way serving code restores it (`restore_adapter`), its
tensors are compared with the source adapter's, and one vLLM engine serving the
published base generates (a) with the original adapter, (b) with the restored one and
(c) with no adapter. (a) must equal (b) exactly, and (a) must differ from (c) on at least
one prompt: an adapter that vLLM silently drops would otherwise pass.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resources.formats import tensorize
from resources.formats.artifact import check_files
from resources.formats.lora import AdapterError, restore_adapter
from resources.storage.digests import FileDigests
from resources.storage.store import ObjectStore
from resources.validation import expectations
from resources.validation.roundtrip import RoundTripReport
from resources.vllm.runner import (
    GenerationRow,
    GenerationSpec,
    PromptsTooLong,
    VllmRunError,
    compare_generations,
    context_length,
    runtime_dtype,
)


class AdapterGenerationRow(GenerationRow):
    """A prompt's row, and whether the adapter changed what the base model generates."""

    differs_from_base: bool
    base_text: str


@dataclass
class AdapterRoundTrip:
    store: ObjectStore
    prefix: str
    files: FileDigests
    snapshot: Path  # the source adapter, as fetched from the hub
    key_id: str | None
    key: bytes | None
    rank: int
    base_model: Path  # the published base's config directory
    base_loader: dict  # model_loader_extra_config that loads the published base's tensors
    dtype: str  # the base's catalog dtype
    prompts: list[str]
    max_tokens: int
    tolerance: float
    tensor_parallel_size: int = 1  # the base's, when it is a sharded vLLM-tensorized version

    def check_tensors(self, report: RoundTripReport, restored: Path) -> None:
        report.files = [c.row() for c in check_files(self.store, self.prefix, self.files)]
        source = tensorize.load_source_weights(self.snapshot, None)
        report.source_tensors = len(source)
        try:
            restore_adapter(self.store, self.prefix, self.files, self.key_id, self.key, restored)
        except AdapterError as exc:
            report.tensors_error = str(exc)
            return
        report.tensors = tensorize.compare_weights(
            source, tensorize.load_source_weights(restored, None)
        )

    def check_generations(
        self, report: RoundTripReport, restored: Path, generate: Callable[[GenerationSpec], dict]
    ) -> None:
        if not report.tensors_passed:
            report.generations_error = "not run: the tensor check failed"
            return
        try:
            spec = GenerationSpec(
                model=str(self.base_model),
                prompts=self.prompts,
                max_tokens=self.max_tokens,
                max_model_len=context_length(self.base_model, self.prompts, self.max_tokens),
                dtype=runtime_dtype(self.dtype),
                tensorizer=self.base_loader,
                adapters=[
                    {"name": "original", "path": str(self.snapshot), "rank": self.rank},
                    {"name": "restored", "path": str(restored), "rank": self.rank},
                    None,
                ],
            )
            if self.tensor_parallel_size > 1:
                spec.extra_engine_args = {"tensor_parallel_size": self.tensor_parallel_size}
            out = generate(spec)
        except (VllmRunError, PromptsTooLong) as exc:
            report.generations_error = str(exc)
            return
        original, published, base = ({"results": run} for run in out["runs"])
        report.engine_start_s = {"base_with_adapters": out["engine_start_s"]}
        rows = [
            AdapterGenerationRow(
                **row,
                differs_from_base=not (base_row["tokens_equal"] and base_row["within_tolerance"]),
                base_text=base_row["source_text"],
            )
            for row, base_row in zip(
                compare_generations(original, published, self.tolerance),
                compare_generations(base, original, self.tolerance),
                strict=True,
            )
        ]
        report.generations = rows
        if not any(r["differs_from_base"] for r in rows):
            report.generations_error = (
                "with the adapter vLLM generated what the base model generates on every prompt "
                "(same tokens, logprobs within tolerance): the adapter was not applied or has "
                "no effect on these prompts; add prompts where it should change the output"
            )

    def run(self, generate: Callable[[GenerationSpec], dict]) -> RoundTripReport:
        report = RoundTripReport()
        with tempfile.TemporaryDirectory(prefix="modelpub-adapter-") as tmp:
            restored = Path(tmp) / "restored"
            self.check_tensors(report, restored)
            self.check_generations(report, restored, generate)
        report.expectations = expectations.run_expectations(
            report.tensors,
            report.generations,
            self.tolerance,
            tensor_count=report.source_tensors,
            adapter=True,
        )
        return report
