"""Where things live, from the environment, with the embedded local defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    catalog: str
    store: str
    keys: str
    cache: str
    # multiprocess: steps in child processes of the run (one machine); k8s: one pod per step
    # (dagster-k8s's k8s_job_executor), GPU steps on GPU nodes (assets/gpu.py).
    executor: str = "multiprocess"

    @property
    def staging(self) -> str:
        """Where serialization stages a model's files before the upload."""
        return f"{self.cache}/staging"

    @classmethod
    def from_env(cls) -> Settings:
        home = os.environ.get("MODELPUB_HOME", ".modelpub")
        return cls(
            catalog=os.environ.get("MODELPUB_CATALOG", "catalog.yaml"),
            store=os.environ.get("MODELPUB_STORE", f"{home}/store"),
            keys=os.environ.get("MODELPUB_KEYS", f"{home}/keys"),
            cache=os.environ.get("MODELPUB_CACHE", f"{home}/cache"),
            executor=os.environ.get("MODELPUB_EXECUTOR", "multiprocess"),
        )
