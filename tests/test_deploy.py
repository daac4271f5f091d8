"""deploy/: the instance works on a real PostgreSQL, a publish runs with its steps in
separate processes sharing that instance, and the Helm values and README agree with it."""

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from resources.registry.registry import Registry
from resources.settings import Settings
from resources.storage.store import LocalStore
from tests.conftest import LLAMA
from tests.postgres import postgres  # noqa: F401 - the fixture
from tests.processes import run_tool

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KEY = LLAMA.replace("/", "__")


def instance_config() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def local_instance(home: Path, monkeypatch, connection: dict) -> Path:
    """deploy/dagster.yaml in `home`, without its K8sRunLauncher (which needs a cluster to
    start; runs launch in local processes instead), pointed at the test's Postgres."""
    config = instance_config()
    config.pop("run_launcher")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    for name, value in connection.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def dagster(*args: str) -> subprocess.CompletedProcess:
    return run_tool("dagster", *args, timeout=900)


def test_run_launcher_config_is_what_dagster_k8s_accepts():
    from dagster._config import validate_config
    from dagster_k8s import K8sRunLauncher

    launcher = instance_config()["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, [e.message for e in result.errors]


@pytest.mark.postgres
def test_deploy_instance_runs_on_postgres(postgres, tmp_path, monkeypatch):  # noqa: F811
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    home = local_instance(tmp_path / "home", monkeypatch, postgres)
    instance = DagsterInstance.from_config(str(home))
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    concurrency = instance.get_concurrency_config()
    assert concurrency.run_queue_config.max_concurrent_runs == 8
    assert concurrency.run_queue_config.tag_concurrency_limits[0]["key"] == "dagster/partition"
    assert concurrency.pool_config.default_pool_limit == 4
    # The pool limit for GPU steps, set the way the README says, lands in Postgres.
    done = dagster("instance", "concurrency", "set", "gpu", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    again = DagsterInstance.from_config(str(home))
    assert again.event_log_storage.get_concurrency_info("gpu").slot_count == 2


@pytest.mark.postgres
@pytest.mark.vllm
def test_publish_steps_run_in_separate_processes_on_postgres(env, postgres, monkeypatch):  # noqa: F811
    local_instance(Path(os.environ["DAGSTER_HOME"]), monkeypatch, postgres)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("models", [KEY])

    done = dagster(
        "job",
        "execute",
        "-m",
        "dagster_project.definitions",
        "-j",
        "publish_model",
        "--tags",
        json.dumps({"dagster/partition": KEY}),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (run,) = instance.get_runs(RunsFilter(tags={"dagster/partition": KEY}))
    assert run.status == DagsterRunStatus.SUCCESS
    starts = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records
    pids = {r.event_log_entry.step_key: r.event_log_entry.dagster_event.pid for r in starts}
    orchestrator = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START)
    steps = {"model_snapshot", "tensorized_model", "roundtrip_checks", "published_version"}
    assert set(pids) == steps
    assert len(set(pids.values())) == 4, "each step in its own process"
    assert orchestrator.records[0].event_log_entry.dagster_event.pid not in pids.values()

    record = Registry(LocalStore(env.settings.store)).resolve(LLAMA)
    assert record.dagster_run_id == run.run_id and record.validation["passed"]
    assert (record.format, record.tensor_parallel_size) == ("hf", 1)
    published = instance.fetch_materializations(AssetKey("published_version"), limit=1).records
    assert published[0].run_id == run.run_id and published[0].partition_key == KEY


def test_helm_values_render_the_same_instance():
    """What is checked: the values in deploy/values.yaml that Dagster's Helm chart turns
    into dagster.yaml (run coordinator, concurrency, run launcher, storage) equal those in
    deploy/dagster.yaml, value by value. The chart itself is not rendered: Helm is not to
    be had from the package registries this project installs from, so a template change
    in a new chart version would not show here."""
    values, instance = helm_values(), instance_config()
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == instance["run_coordinator"]["class"]
    assert values["concurrency"]["enabled"]
    runs, pools = values["concurrency"]["runs"], values["concurrency"]["pools"]
    expected = instance["concurrency"]
    assert runs["maxConcurrentRuns"] == expected["runs"]["max_concurrent_runs"]
    assert runs["tagConcurrencyLimits"] == expected["runs"]["tag_concurrency_limits"]
    assert pools["defaultLimit"] == expected["pools"]["default_limit"]
    assert pools["granularity"] == expected["pools"]["granularity"]
    launcher = values["runLauncher"]
    assert launcher["type"] == instance["run_launcher"]["class"]
    k8s = launcher["config"]["k8sRunLauncher"]
    assert k8s["jobNamespace"] == instance["run_launcher"]["config"]["job_namespace"]
    storage = instance["storage"]["postgres"]["postgres_db"]
    assert values["postgresql"]["postgresqlScheme"] == storage["scheme"]
    assert "nvidia.com/gpu" not in json.dumps(k8s), "the run pod orchestrates; steps ask for GPUs"

    (code,) = values["dagster-user-deployments"]["deployments"]
    module = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert code["dagsterApiGrpcArgs"] == ["-m", module["module_name"]]
    env = {e["name"]: e["value"] for e in code["env"]}
    assert env["MODELPUB_EXECUTOR"] == "k8s"
    assert Settings.from_env(env).gpu_node_selector  # parses as the GPU steps will read it


def test_readme_documents_deploy():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running on Kubernetes", 1)[1].split("\n## ", 1)[0]
    for path in sorted(DEPLOY.iterdir()):
        assert f"deploy/{path.name}" in section, f"README does not mention deploy/{path.name}"
    (code,) = helm_values()["dagster-user-deployments"]["deployments"]
    for variable in [e["name"] for e in code["env"]] + ["DAGSTER_PG_HOST"]:
        assert variable in section, f"README does not mention {variable}"
    assert "dagster instance concurrency set gpu" in section
