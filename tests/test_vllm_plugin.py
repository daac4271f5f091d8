"""The vLLM plugin (resources/vllm/plugin.py) wraps one private method of vLLM's
TensorizerLoader; this fails, naming it, when upstream renames it or the plugin stops
taking hold, before any engine would fail on it."""

from __future__ import annotations

import pytest

from resources.vllm import plugin

pytestmark = pytest.mark.vllm  # imports vLLM


def test_the_cpu_loader_the_plugin_mends_is_there_and_mended():
    from vllm.model_executor.model_loader.tensorizer_loader import TensorizerLoader

    assert hasattr(TensorizerLoader, "_load_model_serialized_cpu"), (
        "vLLM no longer has TensorizerLoader._load_model_serialized_cpu: mend "
        "resources/vllm/plugin.py (vLLM #55198)"
    )
    plugin.register()
    mended = getattr(TensorizerLoader, "_modelpub_fixed", False)
    assert mended or not plugin.needs_fix(TensorizerLoader)
