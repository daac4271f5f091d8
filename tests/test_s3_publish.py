"""End to end on S3: the publish job against SeaweedFS, through a server crash mid-upload.

The first publish runs in a child process (`modelpub publish`, as a user would run it)
and the S3 server is SIGKILLed while the tensors are being uploaded. After a restart on
the same data, the registry must show nothing of that run, and a second publish must
go through: vLLM validates the artifact read straight from s3://, the version record
and alias appear, and `modelpub gc` finds what the dead upload left behind.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from assets.state import run_state
from dagster_project import cli
from resources.registry import gc
from resources.registry.registry import Registry
from resources.settings import Settings
from resources.storage import open_store
from resources.storage.keys import open_key_store
from resources.storage.s3 import parse_s3_uri
from tests.conftest import LLAMA, use_s3
from tests.gates import Gate
from tests.s3_server import ARTIFACTS_BUCKET, IDENTITIES, SeaweedS3


def artifact_bucket_objects(server: SeaweedS3) -> dict[str, bytes]:
    client = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=ARTIFACTS_BUCKET)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=ARTIFACTS_BUCKET, Key=k)["Body"].read() for k in keys}


@pytest.mark.s3
@pytest.mark.vllm
def test_publish_to_s3_survives_a_server_killed_mid_upload(
    env, monkeypatch, tmp_path_factory, capsys
):
    server = SeaweedS3(tmp_path_factory.mktemp("killable-seaweedfs"))
    server.start()
    try:
        use_s3(monkeypatch, env, server)
        store_uri = env.settings.store

        # the publish stops (tests/gates.py) once the first part of its upload is sent: the
        # multipart upload is in flight however small the model
        uploading = Gate(str(env.root / "gate"), "resources.storage.s3:_Multipart.upload")
        first = subprocess.Popen(
            [sys.executable, "-m", "dagster_project.cli", "publish", LLAMA],
            env=uploading.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        uploading.wait_arrived()
        bucket, prefix = parse_s3_uri(store_uri)
        in_flight = server.client().list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/vllm/")
        assert in_flight.get("Uploads"), "no multipart upload in flight"
        server.kill()
        uploading.open()
        output = first.communicate(timeout=300)[0]
        assert first.returncode == 1, output
        summary = output[output.index("modelpub: publishing") :]  # after Dagster's logs
        assert "nothing was published" in summary
        # the upload failed, then each retry of the step found the server still gone
        assert f"cannot reach the S3 endpoint {server.endpoint}" in summary

        server.start()  # same data directory, same ports
        registry = Registry(open_store(store_uri, env.settings.store_s3))
        assert registry.versions(LLAMA) == []
        assert registry.aliases(LLAMA) == {}
        assert registry.reservation(LLAMA, "v1") is not None  # the dead run's suffix stays taken

        record = cli.publish(env.settings, LLAMA)
        assert record.suffix == "v2"
        assert record.tensors_uri == f"{store_uri}/vllm/{LLAMA}/v2/model.tensors"
        assert record.validation["passed"]
        assert record.validation["generations"]["passed"]
        assert registry.resolve(LLAMA) == record
        assert registry.aliases(LLAMA) == {"latest": "v2"}
        # neither run, the failed nor the published, left anything in the staging disk
        assert list(Path(env.settings.staging).iterdir()) == []

        keys = open_key_store(env.settings.keys, store_uri, env.settings.keys_s3)
        runs = partial(run_state, DagsterInstance.get())
        orphans = gc.find_orphans(registry, keys, runs).orphans
        dead_key = record.key_id.replace("/v2", "/v1")
        assert [(o.reference, o.unfinished, o.key_id) for o in orphans] == [
            (f"{LLAMA}@v1", [f"vllm/{LLAMA}/v1/model.tensors"], dead_key)
        ]
        assert "ended without publishing" in orphans[0].why
        assert gc.remove(registry, keys, orphans[0])
        assert gc.find_orphans(registry, keys, runs).orphans == []
        assert not keys.exists(dead_key) and keys.exists(record.key_id)

        key = keys.get(record.key_id)
        for name, body in artifact_bucket_objects(server).items():
            assert not name.endswith(".key"), name
            for form in (key, key.hex().encode(), base64.b64encode(key)):
                assert form not in body, f"key material in s3://{ARTIFACTS_BUCKET}/{name}"

        assert cli.main(["verify", f"{LLAMA}@latest"]) == 0  # re-reads every tensor from S3

        model_dir = env.root / "serve"
        assert cli.main(["fetch-config", f"{LLAMA}@v2", str(model_dir)]) == 0
        config = json.loads((model_dir / "config.json").read_text())
        assert config == json.loads((env.mirror / LLAMA / "config.json").read_text())
        assert not (model_dir / "model.tensors").exists()
        capsys.readouterr()
        assert cli.main(["serve-command", f"{LLAMA}@latest"]) == 0
        command = capsys.readouterr().out
        assert f"modelpub fetch-config {LLAMA}@v2" in command
        assert server.endpoint in command and record.tensors_uri in command
        for identity in IDENTITIES.values():
            assert identity.secret_key not in command
    finally:
        server.stop()


@pytest.mark.s3
@pytest.mark.parametrize(
    "variable", ["MODELPUB_S3_SECRET_ACCESS_KEY", "MODELPUB_KEYS_S3_SECRET_ACCESS_KEY"]
)
def test_publish_with_a_wrong_secret_fails_before_any_upload(s3_env, monkeypatch, variable):
    import os

    right = os.environ[variable]
    monkeypatch.setenv(variable, "not-the-secret")
    with pytest.raises(cli.PublishFailed) as caught:
        cli.publish(s3_env.settings, LLAMA)
    events = DagsterInstance.get().all_logs(caught.value.run_id)
    kinds = {e.dagster_event.event_type for e in events if e.dagster_event}
    assert DagsterEventType.STEP_UP_FOR_RETRY not in kinds  # no retry loop
    started = {
        e.dagster_event.step_key
        for e in events
        if e.dagster_event and e.dagster_event.is_step_start
    }
    assert "roundtrip_checks" not in started  # no vLLM
    assert "SignatureDoesNotMatch" in str(caught.value)
    assert variable.removesuffix("SECRET_ACCESS_KEY") in str(caught.value)

    monkeypatch.setenv(variable, right)
    store = open_store(s3_env.settings.store, s3_env.settings.store_s3)
    assert store.list("vllm") == []
    assert Registry(store).versions(LLAMA) == []


@pytest.mark.s3
def test_unreachable_key_store_fails_clearly_and_publishes_nothing(s3_env, monkeypatch):
    from tests.s3_server import free_ports

    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("MODELPUB_KEYS_S3_ENDPOINT_URL", endpoint)
    with pytest.raises(cli.PublishFailed) as caught:
        cli.publish(Settings.from_env(), LLAMA)
    assert "cannot reach the S3 endpoint" in str(caught.value)
    assert endpoint in str(caught.value)
    store = open_store(s3_env.settings.store, s3_env.settings.store_s3)
    assert Registry(store).versions(LLAMA) == []
    assert [k for k in store.list("vllm") if k.endswith(".tensors")] == []
