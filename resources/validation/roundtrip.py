"""Round-trip validation: does the published artifact reproduce the source model?

Three layers, each catching what the one before cannot: the files' sha256s match the
record (a swapped config), every tensor deserializes (from bytes checked against the
record, decrypted) to the source's exact bytes (tampering, a wrong key), and vLLM
loading the artifact generates exactly what vLLM loading the source generates (a format
vLLM reads differently).
Great Expectations then states the pass criteria over the resulting tables.

The vLLM-tensorized format holds vLLM's parameters (fused, sharded per rank), which have no
one-to-one counterpart in the checkpoint: for it the tensor check proves every rank file
decrypts and hash-verifies, and equivalence with the source rests on vLLM's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from resources.formats import tensorize
from resources.formats.access import vllm_loader_options
from resources.formats.artifact import FileRow, check_files
from resources.formats.checked_read import checked_first
from resources.formats.format import artifact_format
from resources.formats.tensorize import TensorRow
from resources.layout import tensors_name
from resources.registry.records import RoundTripProof
from resources.storage.digests import FileDigests
from resources.storage.store import ObjectStore
from resources.validation import expectations
from resources.vllm.runner import (
    GenerationRow,
    GenerationSpec,
    PromptsTooLong,
    VllmRunError,
    compare_generations,
    context_length,
    engines_fit_side_by_side,
    generate_each,
    runtime_dtype,
)


@dataclass
class RoundTripReport:
    files: list[FileRow] = field(default_factory=list)
    tensors: list[TensorRow] = field(default_factory=list)
    tensors_error: str | None = None
    source_tensors: int = 0
    generations: list[GenerationRow] = field(default_factory=list)
    generations_error: str | None = None
    engine_start_s: dict = field(default_factory=dict)
    expectations: dict = field(default_factory=dict)

    @property
    def tensors_passed(self) -> bool:
        return (
            self.tensors_error is None
            and bool(self.tensors)
            and all(r["equal"] for r in self.tensors)
            and all(r["present"] and r["sha256_matches"] for r in self.files)
        )

    @property
    def generations_passed(self) -> bool:
        return (
            self.generations_error is None
            and bool(self.generations)
            and all(r["tokens_equal"] and r["within_tolerance"] for r in self.generations)
        )

    @property
    def expectations_passed(self) -> bool:
        return bool(self.expectations.get("success"))

    @property
    def passed(self) -> bool:
        return self.tensors_passed and self.generations_passed and self.expectations_passed

    def tensors_problem(self) -> str | None:
        """Why `tensors_match` failed, in one line a person can act on; None if it passed."""
        if self.tensors_passed:
            return None
        if self.tensors_error:
            return self.tensors_error
        changed = [r["file"] for r in self.files if not (r["present"] and r["sha256_matches"])]
        if changed:
            return f"files missing or changed since upload: {', '.join(changed)}"
        unequal = [r["name"] for r in self.tensors if not r["equal"]]
        if unequal:
            return (
                f"{len(unequal)} of {len(self.tensors)} tensors differ from the source "
                f"(first: {unequal[0]})"
            )
        return "no tensors were compared"

    def generations_problem(self) -> str | None:
        """Why `vllm_outputs_match` failed, in one line; None if it passed."""
        if self.generations_passed:
            return None
        if self.generations_error:
            return self.generations_error
        if not self.generations:
            return "no prompt was generated"
        rows = self.generations
        problems = []
        tokens = [r for r in rows if not r["tokens_equal"]]
        if tokens:
            problems.append(
                f"greedy tokens differ from the source model's on {len(tokens)} of {len(rows)} "
                f"prompts (first: {tokens[0]['prompt']!r})"
            )
        logprobs = [r for r in rows if not r["within_tolerance"]]
        if logprobs:
            worst = max(r["max_abs_logprob_diff"] for r in logprobs)
            problems.append(
                f"logprobs differ by up to {worst:.3g}, beyond the tolerance, on "
                f"{len(logprobs)} of {len(rows)} prompts"
            )
        return "; ".join(problems)

    def expectations_problem(self) -> str | None:
        """Why `great_expectations` failed, in one line; None if it passed."""
        if self.expectations_passed:
            return None
        failed = [
            f"{r['table']}.{r['expectation']}" + (f"({r['column']})" if r.get("column") else "")
            for r in self.expectations.get("results", [])
            if not r["success"]
        ]
        return f"failed expectations: {', '.join(failed)}" if failed else "the suite did not run"

    def summary(self) -> dict:
        return {
            "passed": self.passed,
            "tensors": {
                "passed": self.tensors_passed,
                "count": len(self.tensors),
                "error": self.tensors_error,
            },
            "generations": {
                "passed": self.generations_passed,
                "prompts": len(self.generations),
                "max_abs_logprob_diff": max(
                    (r["max_abs_logprob_diff"] for r in self.generations), default=None
                ),
                "error": self.generations_error,
            },
            "expectations": {
                "passed": self.expectations_passed,
                "evaluated": len(self.expectations.get("results", [])),
            },
        }

    def to_json(self) -> dict:
        return {"passed": self.passed, "summary": self.summary(), **asdict(self)}

    def proof(self, report_uri: str | None) -> RoundTripProof:
        """What the publish step signs: the sha256 of each file as these checks read it."""
        return RoundTripProof(
            passed=self.passed,
            sha256={r["file"]: r["sha256"] for r in self.files if r["sha256_matches"]},
            summary=self.summary(),
            report_uri=report_uri,
        )


@dataclass
class RoundTrip:
    """Everything needed to check one published artifact against its source snapshot."""

    store: ObjectStore
    prefix: str
    files: FileDigests
    snapshot: Path
    dtype: str
    key_id: str | None
    key: bytes | None
    keyfile: Path | None
    prompts: list[str]
    max_tokens: int
    tolerance: float
    fmt: str = "hf"
    tensor_parallel_size: int = 1

    def check_tensors(self, report: RoundTripReport) -> None:
        """Each file read once: its digest checked, part by part, before tensorizer decrypts
        the tensors files as they stream, compared with the source one tensor at a time."""
        source = None
        fmt = artifact_format(self.fmt)
        if fmt.compares_with_source:
            # one tensor of each side in memory at a time, not two copies of the model
            source = tensorize.SourceCheckpoint(self.snapshot, self.dtype)
            report.source_tensors = len(source.names())
        tensors_file = tensors_name(self.tensor_parallel_size)
        names = fmt.tensors_files(tensors_file, self.tensor_parallel_size)

        def reader(name: str) -> Callable[[BinaryIO], None]:
            def read(stream: BinaryIO) -> None:
                if report.tensors_error:
                    return  # one failure is the finding; the rest are only hashed
                uri = self.store.uri(f"{self.prefix}/{name}")
                try:
                    published = tensorize.iter_deserialized(stream, self.key)
                    if source is None:
                        rows = tensorize.describe_weights(dict(published), prefix=f"{name}:")
                    else:
                        rows = tensorize.compare_published(source, published)
                except Exception as exc:  # noqa: BLE001 - any failure to read back fails it
                    report.tensors_error = tensorize.describe_load_error(
                        exc, uri, self.key_id, checked_first(stream)
                    )
                    return
                report.tensors += rows

            return read

        readers = {name: reader(name) for name in names}
        checks = check_files(self.store, self.prefix, self.files, readers)
        report.files = [c.row() for c in checks]
        missing = [n for n in names if n not in self.files]
        if missing and report.tensors_error is None:
            report.tensors_error = f"the record names no {', '.join(missing)}"
        if source is None:
            report.source_tensors = len(report.tensors)

    def check_generations(
        self, report: RoundTripReport, generate: Callable[[GenerationSpec], dict]
    ) -> None:
        if not report.tensors_passed:
            report.generations_error = "not run: the tensor check failed"
            return
        dtype = runtime_dtype(self.dtype)
        loader = vllm_loader_options(
            self.store,
            f"{self.prefix}/{tensors_name(self.tensor_parallel_size)}",
            with_secrets=True,
        )
        if self.keyfile is not None:
            loader["encryption_keyfile"] = str(self.keyfile)
        try:
            common = dict(
                prompts=self.prompts,
                max_tokens=self.max_tokens,
                dtype=dtype,
                max_model_len=context_length(self.snapshot, self.prompts, self.max_tokens),
            )
            if self.tensor_parallel_size > 1:
                common["extra_engine_args"] = {"tensor_parallel_size": self.tensor_parallel_size}
            with self.store.config_dir(self.prefix, self.files) as model_dir:
                source, published = generate_each(
                    [
                        GenerationSpec(model=str(self.snapshot), **common),
                        GenerationSpec(model=str(model_dir), tensorizer=loader, **common),
                    ],
                    generate,
                    side_by_side=engines_fit_side_by_side(tensorize.weight_bytes(self.snapshot)),
                )
        except (VllmRunError, PromptsTooLong) as exc:
            report.generations_error = str(exc)
            return
        report.engine_start_s = {
            "source": source["engine_start_s"],
            "published": published["engine_start_s"],
        }
        report.generations = compare_generations(source, published, self.tolerance)

    def run(self, generate: Callable[[GenerationSpec], dict]) -> RoundTripReport:
        report = RoundTripReport()
        self.check_tensors(report)
        self.check_generations(report, generate)
        report.expectations = expectations.run_expectations(
            report.tensors,
            report.generations,
            self.tolerance,
            tensor_count=report.source_tensors,
            against_source=artifact_format(self.fmt).compares_with_source,
        )
        return report
