"""Fuzz-style: many malformed catalogs, each refused precisely, none writing a file."""

import random
import string
from pathlib import Path

import pytest
import yaml

from resources.catalog import CatalogError, load_catalog

VALID = {
    "hubs": {"mirror": {"kind": "git_mirror", "root": "mirrors"}},
    "models": [
        {
            "repo_id": "org/model",
            "hub": "mirror",
            "ref": "main",
            "dtype": "float16",
            "encrypt": True,
            "prompts": ["hello"],
            "max_tokens": 8,
            "logprob_tolerance": 0.01,
        }
    ],
}
BAD_VALUES = [
    None,
    3,
    -1,
    10**12,
    1e308,
    True,
    [],
    {},
    "x" * 5000,
    "../x",
    "a/../b",
    "/etc",
    "a|b",
    "org/name/extra",
    "\x00",
    "  ",
    ["../x"],
    {"nested": "map"},
]
FIELDS = {"repo_id", "hub", "ref", "dtype", "encrypt", "prompts", "max_tokens", "logprob_tolerance"}


def mutations(rng: random.Random):
    """(description, catalog text) pairs, every one of them malformed."""
    for i in range(150):
        doc = yaml.safe_load(yaml.safe_dump(VALID))
        entry = doc["models"][0]
        kind = i % 5
        if kind == 0:  # a wrong type or value in a model field
            field = rng.choice(sorted(FIELDS))
            value = rng.choice(BAD_VALUES)
            if field in ("encrypt",) and isinstance(value, bool):
                value = "maybe"
            if field == "prompts" and value == []:
                value = [""]
            entry[field] = value
            yield f"models[0].{field}={value!r:.40}", yaml.safe_dump(doc), f".{field}"
        elif kind == 1:  # an unknown field
            name = "".join(rng.choices(string.ascii_lowercase, k=8))
            entry[name] = "x"
            yield f"unknown field {name}", yaml.safe_dump(doc), name
        elif kind == 2:  # a required field missing
            field = rng.choice(["repo_id", "hub", "prompts"])
            del entry[field]
            yield f"missing {field}", yaml.safe_dump(doc), field
        elif kind == 3:  # a duplicate YAML key
            text = yaml.safe_dump(doc).replace("  hub: mirror\n", "  hub: mirror\n  hub: other\n")
            yield "duplicate key", text, "duplicate key 'hub'"
        else:  # a path-traversal repo id or ref
            field = rng.choice(["repo_id", "ref"])
            entry[field] = rng.choice(["../x", "../../etc/passwd", "org/..", "..", "a/../../b"])
            yield f"traversal in {field}", yaml.safe_dump(doc), f".{field}"


@pytest.mark.parametrize(("case", "text", "expected"), list(mutations(random.Random(1234))))
def test_malformed_catalog_is_refused_precisely(tmp_path, monkeypatch, case, text, expected):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, (case, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.yaml"]


def test_huge_and_explosive_catalogs_are_refused(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text("hubs: {}\nmodels: []\n# " + "x" * (2 << 20) + "\n")
    with pytest.raises(CatalogError, match="larger than"):
        load_catalog(huge)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    with pytest.raises(CatalogError, match="aliases are not allowed"):
        load_catalog(bomb)
    assert not any(p.suffix != ".yaml" for p in Path(tmp_path).iterdir())
