"""Shared fixtures: tiny models in git mirrors, and an isolated modelpub home per test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagster_project.demo import commit_tiny_model
from resources.settings import Settings
from resources.vllm.engine_host import HOST_ENV
from tests.s3_server import ARTIFACTS_BUCKET, IDENTITIES, KEYS_BUCKET, SeaweedS3

# Retries still happen (and are counted by the tests); only the waits between them shrink
# from 5, 10, 20 s: in the settings tests build, and in the processes they start.
RETRY_DELAY_S = 0.5
os.environ.setdefault("MODELPUB_RETRY_DELAY_S", str(RETRY_DELAY_S))

LLAMA = "test-org/tiny-llama"
OPT = "test-org/tiny-opt"
PROMPTS = ["Hello world", "The quick brown fox"]


@pytest.fixture(scope="session", autouse=True)
def engine_host(request, tmp_path_factory) -> Iterator[str | None]:
    """One warm engine host (resources/vllm/engine_host.py) for the session's vLLM engines,
    CLI and daemon children included: each engine forks from it instead of importing vLLM
    afresh (about 8 s of a core each). Only where a collected test runs vLLM."""
    if not any(item.get_closest_marker("vllm") for item in request.session.items):
        yield None
        return
    root = tmp_path_factory.mktemp("engine-host")
    socket_path = str(root / "host.sock")
    with (root / "host.log").open("wb") as log:
        host = subprocess.Popen(
            [sys.executable, "-m", "resources.vllm.engine_host", socket_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not Path(socket_path).exists():
        assert host.poll() is None and time.monotonic() < deadline, "the engine host did not start"
        time.sleep(0.05)
    os.environ[HOST_ENV] = socket_path
    yield socket_path
    del os.environ[HOST_ENV]
    os.killpg(host.pid, signal.SIGKILL)
    host.wait()


@pytest.fixture(scope="session")
def mirror_template(tmp_path_factory) -> Path:
    """Git mirrors of a tiny Llama and a tiny OPT, built once per session."""
    root = tmp_path_factory.mktemp("mirror")
    commit_tiny_model(root / LLAMA, arch="llama", seed=0)
    commit_tiny_model(root / OPT, arch="opt", seed=0)
    return root


@dataclass
class Env:
    """A private modelpub home: its own mirror copy, catalog, store, keys and Dagster home."""

    root: Path
    mirror: Path
    settings: Settings

    def write_catalog(self, text: str) -> None:
        Path(self.settings.catalog).write_text(text)


def catalog_yaml(mirror: Path, models: list[dict]) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "hubs": {"mirror": {"kind": "git_mirror", "root": str(mirror)}},
            "models": [
                {
                    "hub": "mirror",
                    "prompts": list(PROMPTS),
                    "max_tokens": 6,
                    "dtype": "float32",
                    **m,
                }
                for m in models
            ],
        }
    )


@pytest.fixture
def env(tmp_path, mirror_template, monkeypatch) -> Env:
    mirror = tmp_path / "mirror"
    shutil.copytree(mirror_template, mirror, symlinks=True)
    settings = home_settings(tmp_path)
    activate(monkeypatch, settings)
    e = Env(root=tmp_path, mirror=mirror, settings=settings)
    e.write_catalog(catalog_yaml(mirror, [{"repo_id": LLAMA}, {"repo_id": OPT}]))
    return e


def home_settings(root: Path) -> Settings:
    return Settings(
        catalog=str(root / "catalog.yaml"),
        store=str(root / "store"),
        keys=str(root / "keys"),
        cache=str(root / "cache"),
        dagster_home=str(root / "dagster_home"),
        retry_delay_s=RETRY_DELAY_S,
    )


def activate(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Point the CLI and Dagster at `settings` (what `Settings.from_env` reads)."""
    Path(settings.dagster_home).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DAGSTER_HOME", settings.dagster_home)
    for name, value in (
        ("MODELPUB_CATALOG", settings.catalog),
        ("MODELPUB_STORE", settings.store),
        ("MODELPUB_KEYS", settings.keys),
        ("MODELPUB_CACHE", settings.cache),
    ):
        monkeypatch.setenv(name, value)


def execute_request(env: Env, instance, request):
    """Run what a sensor or schedule requested, in-process, as the daemon would launch it."""
    from dagster_project.definitions import build_definitions

    job = build_definitions(env.settings).resolve_job_def(request.job_name)
    return job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        run_config=request.run_config,
        tags=request.tags,
        raise_on_error=False,
    )


@pytest.fixture
def instance(env):
    """A real Dagster instance (SQLite) in the test's DAGSTER_HOME."""

    from dagster import DagsterInstance

    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    with DagsterInstance.get() as inst:
        yield inst


# --- S3: a real SeaweedFS server, and a modelpub home that publishes to it ---------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS for the session; tests keep apart by prefix. Tests that kill a
    server start their own `SeaweedS3`."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


def use_s3(monkeypatch, env: Env, server: SeaweedS3) -> Env:
    """Point `env` at `server`: artifacts and keys in separate buckets, each with its own
    credentials, and nothing read from the developer's own AWS configuration."""
    import dataclasses
    import uuid

    prefix = uuid.uuid4().hex[:12]
    for name in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN", "PROFILE"):
        monkeypatch.delenv(f"AWS_{name}", raising=False)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(env.root / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(env.root / "no-aws-credentials"))
    publisher, keykeeper = IDENTITIES["publisher"], IDENTITIES["keykeeper"]
    # For the CLI's subprocesses and Dagster's EnvVars, and as the settings' own input.
    variables = {
        "MODELPUB_STORE": f"s3://{ARTIFACTS_BUCKET}/{prefix}",
        "MODELPUB_KEYS": f"s3://{KEYS_BUCKET}/{prefix}",
        "MODELPUB_S3_ENDPOINT_URL": server.endpoint,
        "MODELPUB_S3_REGION": "us-east-1",
        "MODELPUB_S3_ACCESS_KEY_ID": publisher.access_key,
        "MODELPUB_S3_SECRET_ACCESS_KEY": publisher.secret_key,
        "MODELPUB_KEYS_S3_ACCESS_KEY_ID": keykeeper.access_key,
        "MODELPUB_KEYS_S3_SECRET_ACCESS_KEY": keykeeper.secret_key,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    s3 = Settings.from_env(variables)
    env.settings = dataclasses.replace(
        env.settings, store=s3.store, keys=s3.keys, store_s3=s3.store_s3, keys_s3=s3.keys_s3
    )
    return env


@pytest.fixture
def s3_env(env, s3_server, monkeypatch) -> Env:
    """`env`, publishing to the session's SeaweedFS under a prefix of its own."""
    return use_s3(monkeypatch, env, s3_server)
