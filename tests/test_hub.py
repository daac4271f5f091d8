"""Hubs: git mirrors, and the real huggingface_hub client against a Hub test double."""

import subprocess

import pytest

from resources.sources.hub import GitMirrorHub, HubError, HuggingFaceHub
from tests.conftest import LLAMA
from tests.fake_hub import FakeHub


def head(repo) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(params=["git_mirror", "huggingface"])
def hub(request, mirror_template):
    if request.param == "git_mirror":
        yield GitMirrorHub(mirror_template)
    else:
        with FakeHub(mirror_template) as server:
            yield HuggingFaceHub(endpoint=server.endpoint, token="unused")


def test_resolve_and_snapshot_at_the_pinned_sha(hub, mirror_template, tmp_path):
    sha = hub.resolve(LLAMA, "main")
    assert sha == head(mirror_template / LLAMA)
    snapshot = hub.snapshot(LLAMA, sha, tmp_path)
    assert snapshot == tmp_path / "snapshots" / LLAMA / sha
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (snapshot / name).read_bytes() == (mirror_template / LLAMA / name).read_bytes()
    assert hub.snapshot(LLAMA, sha, tmp_path) == snapshot  # cached: fetched once


def test_missing_revision_and_repo_are_clear_errors(hub):
    with pytest.raises(HubError, match="revision 'no-such-branch' not found"):
        hub.resolve(LLAMA, "no-such-branch")
    with pytest.raises(HubError, match="test-org/absent"):
        hub.resolve("test-org/absent", "main")


def test_snapshot_needs_a_full_sha(hub, tmp_path):
    with pytest.raises(HubError, match="not a full commit sha"):
        hub.snapshot(LLAMA, "main", tmp_path)


def test_hub_token_is_sent_and_a_wrong_one_refused(mirror_template):
    with FakeHub(mirror_template, token="secret") as server:
        assert HuggingFaceHub(server.endpoint, token="secret").resolve(LLAMA, "main")
        with pytest.raises(HubError, match="not found .*or private: set HF_TOKEN"):
            HuggingFaceHub(server.endpoint, token="wrong").resolve(LLAMA, "main")


def test_unreachable_hub_is_a_transient_error():
    with pytest.raises(HubError, match="cannot reach|answered") as info:
        HuggingFaceHub("http://127.0.0.1:9", token=None).resolve(LLAMA, "main")
    assert info.value.transient
