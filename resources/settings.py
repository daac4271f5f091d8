"""Everything modelpub takes from the environment, read here and nowhere else.

Other modules take these values as arguments, so a test or a caller states what it runs
with instead of setting variables. The bottom layer, so that assets and resources may
take a `Settings` too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resources.errors import ModelpubError

ARTIFACT_S3 = "MODELPUB_S3"
KEYS_S3 = "MODELPUB_KEYS_S3"
# boto3 Session/client argument -> environment variable suffix
S3_FIELDS = {
    "endpoint_url": "ENDPOINT_URL",
    "region_name": "REGION",
    "profile_name": "PROFILE",
    "aws_access_key_id": "ACCESS_KEY_ID",
    "aws_secret_access_key": "SECRET_ACCESS_KEY",
    "aws_session_token": "SESSION_TOKEN",
}
SHARED_S3_FIELDS = {"endpoint_url", "region_name"}  # what a key store may borrow
HF_TOKEN_ENV = "HF_TOKEN"
NODE_SELECTOR_ENV = "MODELPUB_GPU_NODE_SELECTOR"
RETRY_DELAY_ENV = "MODELPUB_RETRY_DELAY_S"
# Set by NVIDIA's GPU feature discovery (part of the GPU operator) on nodes with a GPU.
DEFAULT_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}


@dataclass(frozen=True)
class EnvValue:
    """A setting and the variable it came from: Dagster resources hold secrets as the
    variable's name (`EnvVar`), never the value."""

    name: str
    value: str = field(repr=False)  # a secret, maybe: kept out of logs and tracebacks


@dataclass(frozen=True)
class S3Env:
    """One store's S3 settings: boto3 argument -> the variable that set it. A field not
    here is left to boto3's own chain (`AWS_*` variables, `~/.aws`, instance roles)."""

    fields: Mapping[str, EnvValue] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], prefix: str, fallback_prefix: str | None = None
    ) -> S3Env:
        """`<prefix>_*` variables; endpoint and region may come from `<fallback_prefix>_*`
        (a key store on the same server as the artifacts), credentials never do, so
        whoever holds only the artifact credentials cannot read the keys."""
        fields = {}
        for name, suffix in S3_FIELDS.items():
            candidates = [f"{prefix}_{suffix}"]
            if fallback_prefix and name in SHARED_S3_FIELDS:
                candidates.append(f"{fallback_prefix}_{suffix}")
            variable = next((v for v in candidates if environ.get(v)), None)
            if variable is not None:
                fields[name] = EnvValue(variable, environ[variable])
        return cls(fields)


NO_S3 = S3Env()  # nothing set: boto3's own chain decides


def _node_selector(raw: str | None) -> dict[str, str]:
    """The labels of the cluster's GPU nodes: MODELPUB_GPU_NODE_SELECTOR, else NVIDIA's."""
    if not raw:
        return dict(DEFAULT_NODE_SELECTOR)
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelpubError(f"{NODE_SELECTOR_ENV} is not JSON ({exc}): {raw!r}") from None
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ModelpubError(
            f"{NODE_SELECTOR_ENV} must be a JSON object of label strings, e.g. "
            f'{{"cloud.google.com/gke-accelerator": "nvidia-l4"}}; got {raw!r}'
        )
    return labels


def _retry_delay(raw: str | None) -> float:
    """Seconds before a transient failure's first retry (then doubled each time)."""
    if not raw:
        return 5.0
    try:
        delay = float(raw)
    except ValueError:
        delay = -1.0
    if not delay >= 0:
        raise ModelpubError(f"{RETRY_DELAY_ENV} must be a number of seconds >= 0; got {raw!r}")
    return delay


@dataclass(frozen=True)
class Settings:
    """Where things live and how to reach them, with the embedded local defaults."""

    catalog: str
    store: str
    keys: str
    cache: str
    dagster_home: str  # the Dagster instance the CLI runs publishes in
    # multiprocess: steps in child processes of the run (one machine); k8s: one pod per step
    # (dagster-k8s's k8s_job_executor), GPU steps on GPU nodes (assets/gpu.py).
    executor: str = "multiprocess"
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NODE_SELECTOR))
    hf_endpoint: str | None = None  # for hubs that name no endpoint of their own
    hf_token: str | None = field(default=None, repr=False)  # for hubs whose token_env is unset
    store_s3: S3Env = NO_S3
    keys_s3: S3Env = NO_S3
    verbose: bool = False  # MODELPUB_LOG_LEVEL=DEBUG: the CLI prints Dagster's event stream
    retry_delay_s: float = 5.0  # a transient failure's first retry waits this long

    @property
    def staging(self) -> str:
        """Where serialization stages a model's files before the upload."""
        return f"{self.cache}/staging"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        home = environ.get("MODELPUB_HOME", ".modelpub")
        return cls(
            catalog=environ.get("MODELPUB_CATALOG", "catalog.yaml"),
            store=environ.get("MODELPUB_STORE", f"{home}/store"),
            keys=environ.get("MODELPUB_KEYS", f"{home}/keys"),
            cache=environ.get("MODELPUB_CACHE", f"{home}/cache"),
            dagster_home=environ.get("DAGSTER_HOME", str(Path(home).resolve() / "dagster_home")),
            executor=environ.get("MODELPUB_EXECUTOR", "multiprocess"),
            gpu_node_selector=_node_selector(environ.get(NODE_SELECTOR_ENV)),
            hf_endpoint=environ.get("HF_ENDPOINT") or None,
            hf_token=environ.get(HF_TOKEN_ENV) or None,
            store_s3=S3Env.from_env(environ, ARTIFACT_S3),
            keys_s3=S3Env.from_env(environ, KEYS_S3, fallback_prefix=ARTIFACT_S3),
            verbose=environ.get("MODELPUB_LOG_LEVEL", "").upper() == "DEBUG",
            retry_delay_s=_retry_delay(environ.get(RETRY_DELAY_ENV)),
        )


def hub_token(token_env: str, fallback: str | None) -> str | None:
    """A hub's token: the variable the catalog names for it (`token_env`), resolved where
    the hub is used as Dagster's EnvVar is, else `fallback` (the settings' HF_TOKEN)."""
    return os.environ.get(token_env) or fallback
