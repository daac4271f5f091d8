"""Publish runs in this process: the Dagster instance the CLI uses, the run, and what a
failed run means in a line per failure."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from assets.gpu import GpuPlacement
from assets.publish_jobs import PUBLISH_JOBS
from dagster_project.cli.render import summary
from resources.catalog import load_catalog, partition_key
from resources.errors import ModelpubError
from resources.registry.records import VersionRecord, parse_version
from resources.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from dagster_project.launch import Launch


def instance(settings: Settings) -> DagsterInstance:
    from dagster import DagsterInstance

    home = Path(settings.dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    return DagsterInstance.from_config(str(home))


def ensure_partition(instance: DagsterInstance, partitions: str, key: str) -> None:
    """Add the entry's dynamic partition; a concurrent publish of the same entry may add it
    between the check and the insert, which is the same outcome, not an error."""
    from sqlalchemy.exc import IntegrityError

    if instance.has_dynamic_partition(partitions, key):
        return
    try:
        instance.add_dynamic_partitions(partitions, [key])
    except IntegrityError:
        if not instance.has_dynamic_partition(partitions, key):
            raise


def publish(
    settings: Settings, key: str, force: bool = False, verbose: bool = False
) -> VersionRecord:
    """Run the publish job in-process for one catalog entry; returns the version record.
    Prints a line per step and a summary to stderr; `verbose`: Dagster's event stream too."""
    from dagster_project import launch

    entry = load_catalog(settings.catalog).entry(partition_key(key))
    run = launch.publish_model(entry, GpuPlacement.of(settings), force=force)
    return _run_publish(settings, run, verbose)


def publish_adapter(
    settings: Settings, name: str, force: bool = False, verbose: bool = False
) -> VersionRecord:
    """Publish a catalog adapter (repo id or partition key) against its base's `latest`."""
    from dagster_project import launch

    adapter = load_catalog(settings.catalog).adapter(name)
    run = launch.publish_adapter(adapter, GpuPlacement.of(settings), force=force)
    return _run_publish(settings, run, verbose)


def _run_publish(settings: Settings, run: Launch, verbose: bool) -> VersionRecord:
    """Run a publish job in-process for one partition; returns the published record."""
    from dagster_project.definitions import build_definitions
    from dagster_project.progress import StepLines, step_lines_logger

    if settings.executor == "k8s":
        raise ModelpubError(
            "MODELPUB_EXECUTOR=k8s: `modelpub publish` runs in this process, where the "
            "Kubernetes executor cannot start step pods; start the run from the Dagster UI "
            "(or let the sensor start it), which launches it through the instance's run "
            "launcher with the same run config"
        )

    publish_job = PUBLISH_JOBS[run.job_name]
    defs = build_definitions(settings)
    with instance(settings) as dagster:
        ensure_partition(dagster, publish_job.partitions, run.partition_key)
        job = defs.resolve_job_def(run.job_name)
        lines = StepLines(sys.stderr, live=sys.stderr.isatty())
        loggers = {**(job.loggers if verbose else {}), "modelpub_steps": step_lines_logger(lines)}
        # Dagster starts the loggers the run config names, and its console one if none;
        # verbose: the console one at DEBUG, as Dagster's own default is.
        logger_config = {name: {"config": {"log_level": "DEBUG"}} for name in job.loggers}
        run_config = {
            **run.run_config,
            "loggers": {"modelpub_steps": {}, **(logger_config if verbose else {})},
        }
        try:
            result = job.with_logger_defs(loggers).execute_in_process(
                instance=dagster,
                partition_key=run.partition_key,
                tags=run.tags,
                run_config=run_config,
                raise_on_error=False,
            )
        finally:
            lines.close()
    key, publish_op = run.partition_key, publish_job.publish
    failed_checks = [
        f"{e.check_name}: {e.description or 'see the check metadata in the Dagster UI'}"
        for e in result.get_asset_check_evaluations()
        if not e.passed
    ]
    published = result.asset_materializations_for_node(publish_op)
    if not result.success or not published:
        errors = [
            f"{ev.step_key}: {_root_cause(ev.event_specific_data)}"
            for ev in result.all_events
            if ev.is_step_failure
        ]
        raise PublishFailed(key, result.run_id, failed_checks, errors)
    record = parse_version(published[0].metadata["record"].value)
    print(summary(record, result.run_id), file=sys.stderr)
    return record


def _root_cause(failure) -> str:
    """What a step failure means, in one line: the step's own `Failure` description (kept
    when Dagster reports only "Exceeded max_retries"), else the innermost error's message."""
    described = failure.user_failure_data.description if failure.user_failure_data else None
    if described:
        return described.strip()
    error = failure.error
    while error.cause is not None:
        error = error.cause
    return re.sub(r"^[\w.]+: ", "", error.message.strip())


class PublishFailed(ModelpubError):
    def __init__(self, key: str, run_id: str, failed_checks: list[str], errors: list[str]):
        lines = [f"publishing {key} failed (Dagster run {run_id}); nothing was published"]
        lines += [f"  check failed: {c}" for c in failed_checks]
        lines += [f"  error: {e}" for e in errors]
        super().__init__("\n".join(lines))
        self.run_id = run_id
