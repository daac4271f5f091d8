"""The `modelpub` model loader: vLLM loads a published version by its reference, checked.

Registered in every vLLM process by the project's `vllm.general_plugins` entry point
`modelpub_loader` (pyproject.toml).
`model_loader_extra_config` is a resources.serving.prepare.LoadRequest (`{"reference": "repo@vN",
...}`, as `vllm_kwargs` gives it); the tensors stream from the store through the checks of
`resources.serving.prepare.loaded_weights` and are handed to the model's own `load_weights`, which
maps the checkpoint's names onto vLLM's fused layers. The key and the store's credentials
come from this process's settings (MODELPUB_* and the S3 variables), never from vLLM's
arguments.
"""

from __future__ import annotations

from pathlib import Path

from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from resources.serving.prepare import LoadRequest, loaded_weights


class ModelpubLoader(BaseModelLoader):
    def __init__(self, load_config: LoadConfig):
        super().__init__(load_config)
        self.request = LoadRequest.of(load_config.model_loader_extra_config)

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing to download: the tensors stream from the store while loading."""

    def load_weights(self, model, model_config: ModelConfig) -> None:
        model.load_weights(loaded_weights(self.request, Path(model_config.model)))


def register() -> None:
    from vllm.model_executor.model_loader import register_model_loader

    from resources.serving.prepare import LOAD_FORMAT

    register_model_loader(LOAD_FORMAT)(ModelpubLoader)
