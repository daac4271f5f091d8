"""Work the bench measures in a fresh process: peak resident memory is per process,
and a publish run must not reuse the bench's warm imports.

`python -m bench.child KIND SPEC_JSON` prints one JSON line:
- `publish_step`: the publish step alone (write_artifact), with its peak RSS (figure 4);
- `plain_run`: the publish job's work done by calling the domain code directly, each
  step timed (the baseline of figure 5), with the round trip's two vLLM engine
  timings (figure 3);
- `dagster_run`: the same catalog entry published by the real Dagster job (figure 5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss() -> int:
    """This process's high-water RSS. Not getrusage's ru_maxrss: Linux carries that
    across exec from the parent, so a child reports at least its parent's size."""
    return _status_kb("VmHWM")


def current_rss() -> int:
    return _status_kb("VmRSS")


def publish_step(spec: dict) -> dict:
    from tensorizer import EncryptionParams

    from resources.formats.artifact import write_artifact
    from resources.storage.store import LocalStore

    idle = current_rss()
    root = Path(spec["root"])
    (root / "staging").mkdir(parents=True, exist_ok=True)
    key = EncryptionParams.random().key
    store = LocalStore(root / "store")
    start = time.perf_counter()
    written = write_artifact(
        store, "bench/v1", Path(spec["snapshot"]), "float16", key, root / "staging"
    )
    for name in written.files:  # stored durably, as the raw write it is compared with
        fd = os.open(store.path(f"bench/v1/{name}"), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return {"seconds": time.perf_counter() - start, "idle_rss": idle, "peak_rss": peak_rss()}


def plain_run(spec: dict) -> dict:
    """What `publish_model` does, step by step, without Dagster."""
    from resources.catalog import load_catalog, partition_key
    from resources.formats.artifact import write_artifact
    from resources.layout import model_prefix, validation_key
    from resources.registry.publish import PublishPlan, publish_staged
    from resources.registry.records import ModelSettings, StagedArtifact
    from resources.settings import Settings
    from resources.sources.hub import make_hub
    from resources.stores import open_stores
    from resources.validation.roundtrip import RoundTrip
    from resources.vllm import runner as vllm_runner

    settings = Settings.from_env()
    entry = load_catalog(settings.catalog).entry(partition_key(spec["repo_id"]))
    spec_hub = load_catalog(settings.catalog).hubs[entry.hub]
    steps: dict[str, float] = {}
    run_id = "plain-run"

    start = time.perf_counter()
    hub = make_hub(
        spec_hub.kind, spec_hub.root, endpoint=settings.hf_endpoint, token=settings.hf_token
    )
    sha = hub.resolve(entry.repo_id, entry.ref)
    snapshot = hub.snapshot(entry.repo_id, sha, Path(settings.cache))
    steps["model_snapshot"] = time.perf_counter() - start

    start = time.perf_counter()
    vllm_runner.context_length(snapshot, entry.prompts, entry.max_tokens)  # as the step does
    registry, keys = open_stores(settings)
    store = registry.store
    suffix = registry.reserve_suffix(entry.repo_id, run_id)
    key_id = f"{partition_key(entry.repo_id)}/{suffix}"
    key = keys.create(key_id)
    prefix = model_prefix(entry.repo_id, suffix)
    staging = Path(settings.staging) / run_id
    staging.mkdir(parents=True, exist_ok=True)
    written = write_artifact(store, prefix, snapshot, entry.dtype, key, staging)
    steps["tensorized_model"] = time.perf_counter() - start

    engines: list[dict] = []

    def generate(spec: vllm_runner.GenerationSpec) -> dict:
        result = vllm_runner.generate(spec)
        engines.append({k: v for k, v in result.items() if k != "results"})
        return result

    start = time.perf_counter()
    with keys.keyfile(key_id) as keyfile:
        report = RoundTrip(
            store=store,
            prefix=prefix,
            files=written.files,
            snapshot=snapshot,
            dtype=entry.dtype,
            key_id=key_id,
            key=keyfile.read_bytes(),
            keyfile=keyfile,
            prompts=entry.prompts,
            max_tokens=entry.max_tokens,
            tolerance=entry.logprob_tolerance,
        ).run(generate)
    report_key = validation_key(entry.repo_id, suffix, run_id)
    store.create(report_key, json.dumps(report.to_json(), default=str).encode())
    steps["roundtrip_checks"] = time.perf_counter() - start
    if not report.passed:
        raise RuntimeError(f"round trip failed: {json.dumps(report.summary())}")

    start = time.perf_counter()
    staged = StagedArtifact(
        repo_id=entry.repo_id,
        suffix=suffix,
        sha=sha,
        prefix=prefix,
        tensors_file="model.tensors",
        key_id=key_id,
        files=written.files,
        reused=False,
        settings=ModelSettings(dtype=entry.dtype, encrypted=True),
    )
    plan = PublishPlan(run_id=run_id, catalog_key=entry.key, hf_ref=entry.ref)
    publish_staged(registry, store, keys, staged, plan, report.proof(store.uri(report_key)))
    steps["published_version"] = time.perf_counter() - start
    source, published = engines  # the round trip runs the source first
    return {
        "steps": steps,
        "seconds": sum(steps.values()),
        "engines": {"safetensors": source, "tensorizer": published},
        "peak_rss": peak_rss(),
    }


def dagster_run(spec: dict) -> dict:
    """The job as `modelpub publish` runs it. Importing Dagster, the definitions and the
    domain modules plain_run imports before its clock starts is timed apart: a
    long-lived deployment (`dagster dev`, a daemon) pays it once."""
    start = time.perf_counter()
    import dagster_project.definitions  # noqa: F401
    import resources.formats.artifact  # noqa: F401  (what plain_run imports untimed too)
    import resources.validation.roundtrip  # noqa: F401
    from dagster_project.cli import publish
    from resources.settings import Settings

    imports = time.perf_counter() - start
    start = time.perf_counter()
    record = publish(Settings.from_env(), spec["repo_id"])
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "import_s": imports,
        "steps": step_durations(),
        "suffix": record.suffix,
        "peak_rss": peak_rss(),
    }


def step_durations() -> dict[str, float]:
    """Seconds from each step's start event to its success event, in the latest run."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[entry.step_key] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            out[entry.step_key] = entry.timestamp - starts[entry.step_key]
    return out


def publish_model_job():
    """The publish job as a code location builds it, for `reconstructable`."""
    from dagster_project.definitions import build_definitions
    from resources.settings import Settings

    return build_definitions(Settings.from_env()).resolve_job_def("publish_model")


def dagster_multiprocess_run(spec: dict) -> dict:
    """The job the way the daemon's run worker runs it: the multiprocess executor, every
    step in a process of its own, forked from a server that imports the project once per
    run (inside the clock: the daemon pays it for every run)."""
    from dagster import DagsterInstance, execute_job, reconstructable

    from resources.catalog import partition_key

    key = partition_key(spec["repo_id"])
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("models", [key])
    start = time.perf_counter()
    with execute_job(
        reconstructable(publish_model_job), instance=instance, tags={"dagster/partition": key}
    ) as result:
        if not result.success:
            raise RuntimeError("the multiprocess publish run failed")
    return {"seconds": time.perf_counter() - start, "steps": step_durations()}


KINDS = {
    "publish_step": publish_step,
    "plain_run": plain_run,
    "dagster_run": dagster_run,
    "dagster_multiprocess_run": dagster_multiprocess_run,
}


def run_child(kind: str, spec: dict, env: dict | None = None, timeout_s: float = 1200) -> dict:
    """Run `kind` in a fresh interpreter and return what it measured."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", kind, json.dumps(spec)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-30:])
        raise RuntimeError(f"bench.child {kind} failed ({done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(KINDS[sys.argv[1]](json.loads(sys.argv[2]))))
