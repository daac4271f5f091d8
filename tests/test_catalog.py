"""A malformed catalog is refused before any run, with the entry and field named."""

import pytest

from dagster_project.definitions import build_definitions
from resources.catalog import CatalogError, load_catalog, parse_catalog

GOOD = """
hubs:
  mirror: {kind: git_mirror, root: mirrors}
models:
  - repo_id: org/model-a
    hub: mirror
    prompts: ["hi"]
"""


def refused(text: str) -> str:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, source="catalog.yaml")
    return str(info.value)


def test_good_catalog_has_defaults_and_sanitised_keys(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(GOOD)
    catalog = load_catalog(path)
    entry = catalog.entry("org__model-a")
    assert (entry.ref, entry.dtype, entry.encrypt) == ("main", "float16", True)
    assert catalog.hubs["mirror"].root == str(tmp_path / "mirrors")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("dtype: float64", "models[0] (org/model-a).dtype: Input should be 'float16'"),
        ("prompts: []", "models[0] (org/model-a).prompts: List should have at least 1 item"),
        ("hub: nowhere", "models[0] (org/model-a).hub: unknown hub 'nowhere' (defined: mirror)"),
        ("encrypt: maybe", "models[0] (org/model-a).encrypt: Input should be a valid boolean"),
        ("max_tokens: 0", "models[0] (org/model-a).max_tokens: Input should be greater than"),
        ("colour: blue", "models[0] (org/model-a).colour: Extra inputs are not permitted"),
        ("ref: ../../etc", "models[0] (org/model-a).ref: Value error, '../../etc' is not a"),
    ],
)
def test_bad_field_is_named(change, expected):
    key = change.split(":")[0]
    lines = [line for line in GOOD.splitlines() if not line.strip().startswith(f"{key}:")]
    text = "\n".join(lines) + f"\n    {change}\n"
    assert expected in refused(text)


@pytest.mark.parametrize("repo_id", ["../x", "org/../../x", "/abs", "a/b/c", "a|b", ""])
def test_path_traversal_and_bad_repo_ids_are_refused(repo_id):
    message = refused(GOOD.replace("org/model-a", repo_id or '""'))
    assert "repo_id" in message and "is not a Hugging Face repo id" in message


def test_duplicate_yaml_keys_and_entries_are_refused():
    assert "duplicate key 'hub'" in refused(GOOD + "    hub: mirror\n")
    twice = GOOD + '  - {repo_id: org/model-a, hub: mirror, prompts: ["x"]}\n'
    assert "models[1] (org/model-a): listed twice" in refused(twice)


def test_not_yaml_and_not_a_mapping():
    assert "not valid YAML" in refused("hubs: [")
    assert "expected a mapping" in refused("- just a list")


def test_definitions_refuse_a_malformed_catalog(env):
    env.write_catalog(GOOD.replace("prompts:", "dtype: float64\n    prompts:"))
    with pytest.raises(CatalogError, match="dtype"):
        build_definitions(env.settings)


def test_format_parallelism_and_gpu_fields():
    entry = parse_catalog(GOOD).models[0]
    assert (entry.format, entry.tensor_parallel_size, entry.gpu_count) == ("auto", 1, 1)
    sharded = GOOD + "    tensor_parallel_size: 4\n    gpu: {node_selector: {pool: h100}}\n"
    entry = parse_catalog(sharded).models[0]
    assert (entry.gpu_count, entry.gpu.node_selector) == (4, {"pool": "h100"})
    assert parse_catalog(GOOD + "    gpu: {count: 2}\n").models[0].gpu_count == 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("format: onnx", "models[0] (org/model-a).format: Input should be 'auto', 'hf' or 'vllm'"),
        (
            "format: hf\n    tensor_parallel_size: 2",
            "models[0] (org/model-a): Value error, tensor_parallel_size 2 needs format 'vllm' "
            "or 'auto': vLLM loads the HF-tensorized format on one rank only",
        ),
        (
            "tensor_parallel_size: 4\n    gpu: {count: 2}",
            "models[0] (org/model-a): Value error, gpu.count 2 is less than "
            "tensor_parallel_size 4: every rank needs its own GPU",
        ),
        ("tensor_parallel_size: 0", "models[0] (org/model-a).tensor_parallel_size: Input should"),
        (
            "gpu: {node_selector: {'bad key!': x}}",
            "models[0] (org/model-a).gpu.node_selector: Value error, 'bad key!' is not a "
            "Kubernetes label key",
        ),
        ("gpu: {gpus: 2}", "models[0] (org/model-a).gpu.gpus: Extra inputs are not permitted"),
    ],
)
def test_bad_format_or_gpu_settings_are_named(extra, expected):
    assert expected in refused(GOOD + f"    {extra}\n")
