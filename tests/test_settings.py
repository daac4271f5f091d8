"""`Settings.from_env` is the one reader of the environment: every variable, its default
and its fallbacks, from plain dicts; and no other module reads the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from assets.dagster_resources import s3_env, s3_resource
from resources.errors import ModelpubError
from resources.settings import EnvValue, S3Env, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_everything_defaults_to_the_modelpub_home():
    settings = Settings.from_env({"MODELPUB_HOME": "/srv/modelpub"})
    assert settings == Settings(
        catalog="catalog.yaml",
        store="/srv/modelpub/store",
        keys="/srv/modelpub/keys",
        cache="/srv/modelpub/cache",
        dagster_home="/srv/modelpub/dagster_home",
        executor="multiprocess",
        gpu_node_selector={"nvidia.com/gpu.present": "true"},
        hf_endpoint=None,
        hf_token=None,
        store_s3=S3Env(),
        keys_s3=S3Env(),
    )
    default = Settings.from_env({})
    assert default.store == ".modelpub/store"
    assert default.dagster_home == str(Path(".modelpub").resolve() / "dagster_home")


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("MODELPUB_CATALOG", "/etc/catalog.yaml", "catalog", "/etc/catalog.yaml"),
        ("MODELPUB_STORE", "s3://models/prod", "store", "s3://models/prod"),
        ("MODELPUB_KEYS", "s3://keys/prod", "keys", "s3://keys/prod"),
        ("MODELPUB_CACHE", "/scratch/cache", "cache", "/scratch/cache"),
        ("DAGSTER_HOME", "/opt/dagster", "dagster_home", "/opt/dagster"),
        ("MODELPUB_EXECUTOR", "k8s", "executor", "k8s"),
        (
            "MODELPUB_GPU_NODE_SELECTOR",
            '{"cloud.google.com/gke-accelerator": "nvidia-l4"}',
            "gpu_node_selector",
            {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        ),
        ("HF_ENDPOINT", "http://hub.internal", "hf_endpoint", "http://hub.internal"),
        ("HF_TOKEN", "hf_secret", "hf_token", "hf_secret"),
        ("MODELPUB_RETRY_DELAY_S", "0.25", "retry_delay_s", 0.25),
    ],
)
def test_each_variable_sets_its_field(variable, value, field, expected):
    home = {"MODELPUB_HOME": "/srv/modelpub"}
    settings = Settings.from_env({**home, variable: value})
    assert getattr(settings, field) == expected
    others = {f: v for f, v in vars(settings).items() if f != field}
    assert others == {f: v for f, v in vars(Settings.from_env(home)).items() if f != field}


ARTIFACT_S3 = {
    "MODELPUB_S3_ENDPOINT_URL": "http://seaweedfs:8333",
    "MODELPUB_S3_REGION": "us-east-2",
    "MODELPUB_S3_PROFILE": "publisher",
    "MODELPUB_S3_ACCESS_KEY_ID": "AKIAPUBLISHER",
    "MODELPUB_S3_SECRET_ACCESS_KEY": "publisher-secret",
    "MODELPUB_S3_SESSION_TOKEN": "publisher-session",
}


def test_each_s3_variable_sets_its_s3resource_field():
    s3 = Settings.from_env(ARTIFACT_S3).store_s3
    assert {f: (v.name, v.value) for f, v in s3.fields.items()} == {
        "endpoint_url": ("MODELPUB_S3_ENDPOINT_URL", "http://seaweedfs:8333"),
        "region_name": ("MODELPUB_S3_REGION", "us-east-2"),
        "profile_name": ("MODELPUB_S3_PROFILE", "publisher"),
        "aws_access_key_id": ("MODELPUB_S3_ACCESS_KEY_ID", "AKIAPUBLISHER"),
        "aws_secret_access_key": ("MODELPUB_S3_SECRET_ACCESS_KEY", "publisher-secret"),
        "aws_session_token": ("MODELPUB_S3_SESSION_TOKEN", "publisher-session"),
    }


def test_the_key_store_borrows_endpoint_and_region_but_never_credentials():
    keys = Settings.from_env({**ARTIFACT_S3, "MODELPUB_KEYS_S3_REGION": ""}).keys_s3
    assert keys == S3Env(
        {
            "endpoint_url": EnvValue("MODELPUB_S3_ENDPOINT_URL", "http://seaweedfs:8333"),
            "region_name": EnvValue("MODELPUB_S3_REGION", "us-east-2"),
        }
    )
    own = {
        "MODELPUB_KEYS_S3_ENDPOINT_URL": "http://keys:8333",
        "MODELPUB_KEYS_S3_ACCESS_KEY_ID": "AKIAKEYKEEPER",
        "MODELPUB_KEYS_S3_SECRET_ACCESS_KEY": "keykeeper-secret",
    }
    settings = Settings.from_env({**ARTIFACT_S3, **own})
    assert {f: v.name for f, v in settings.keys_s3.fields.items()} == {
        "endpoint_url": "MODELPUB_KEYS_S3_ENDPOINT_URL",
        "region_name": "MODELPUB_S3_REGION",
        "aws_access_key_id": "MODELPUB_KEYS_S3_ACCESS_KEY_ID",
        "aws_secret_access_key": "MODELPUB_KEYS_S3_SECRET_ACCESS_KEY",
    }
    assert "endpoint_url" not in Settings.from_env(own).store_s3.fields  # never the other way


def test_s3_settings_become_an_s3resource_with_secrets_named_for_dagster_and_back():
    s3 = Settings.from_env(ARTIFACT_S3).store_s3
    shown = s3_resource("s3://models/prod", s3)
    assert shown.endpoint_url == "http://seaweedfs:8333"
    for field in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        secret = getattr(shown, field)
        assert isinstance(secret, EnvVar) and secret == s3.fields[field].name
    assert s3_resource("/srv/modelpub/store", s3) is None  # a local store has no S3 config
    resolved = S3Resource(**{name: setting.value for name, setting in s3.fields.items()})
    assert {n: v.value for n, v in s3_env(resolved).fields.items()} == {
        n: v.value for n, v in s3.fields.items()
    }


def test_secrets_stay_out_of_the_settings_repr():
    settings = Settings.from_env({**ARTIFACT_S3, "HF_TOKEN": "hf_secret"})
    shown = repr(settings)
    assert "MODELPUB_S3_SECRET_ACCESS_KEY" in shown
    for secret in ("publisher-secret", "publisher-session", "hf_secret"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "nvidia-l4",
            "MODELPUB_GPU_NODE_SELECTOR is not JSON (Expecting value: line 1 column 1 (char 0)): "
            "'nvidia-l4'",
        ),
        (
            '{"a": 1}',
            "MODELPUB_GPU_NODE_SELECTOR must be a JSON object of label strings, e.g. "
            '{"cloud.google.com/gke-accelerator": "nvidia-l4"}; got \'{"a": 1}\'',
        ),
    ],
)
def test_a_bad_gpu_node_selector_is_one_line(raw, message):
    with pytest.raises(ModelpubError) as caught:
        Settings.from_env({"MODELPUB_GPU_NODE_SELECTOR": raw})
    assert str(caught.value) == message


@pytest.mark.parametrize("raw", ["soon", "-1", "nan"])
def test_a_bad_retry_delay_is_one_line(raw):
    with pytest.raises(ModelpubError) as caught:
        Settings.from_env({"MODELPUB_RETRY_DELAY_S": raw})
    assert (
        str(caught.value) == f"MODELPUB_RETRY_DELAY_S must be a number of seconds >= 0; got {raw!r}"
    )


# Reading the environment where it belongs: the engine's child process is handed the
# environment (runner, and the engine host that forks it), and the vLLM plugin reads its
# flag inside vLLM.
READERS = {
    "resources/settings.py",
    "resources/vllm/engine_host.py",
    "resources/vllm/runner.py",
    "resources/vllm/plugin.py",
}
READS = re.compile(r"\bos\.(environb?|getenv)\b|\bfrom os import .*\b(environb?|getenv)\b")


def test_only_the_settings_read_the_environment():
    sources = [
        p for d in ("assets", "resources", "dagster_project") for p in ROOT.glob(f"{d}/**/*.py")
    ]
    readers = {p.relative_to(ROOT).as_posix() for p in sources if READS.search(p.read_text())}
    assert readers == READERS
