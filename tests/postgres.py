"""A real PostgreSQL server for a test session: Debian's `postgresql` binaries, a private
data directory, a free loopback port, password auth over TCP. Torn down at the end.

Started as the `postgres` user when the tests run as root (initdb refuses root).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real_parts import require

USER, DATABASE = "modelpub", "dagster"
MISSING = (
    "PostgreSQL server binaries not found (pg_ctl): install Debian's `postgresql` "
    "(`make test` does) to run the Postgres-backed instance tests"
)


def bindir() -> Path | None:
    """Where initdb and pg_ctl live: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict[str, str]]:
    """The server's connection as the DAGSTER_PG_* variables deploy/dagster.yaml reads."""
    bin_dir = bindir()
    if bin_dir is None:
        require("PostgreSQL", MISSING)
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="modelpub-pg-"))
    password = secrets.token_hex(16)
    (root / "pwfile").write_text(password)
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            require("PostgreSQL", "running as root and there is no `postgres` user")
        for path in (root, root / "pwfile"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*args: object, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*as_user, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")
        return done

    data, port = root / "data", free_port()
    run(
        bin_dir / "initdb",
        "-D",
        data,
        "-U",
        USER,
        "--pwfile",
        root / "pwfile",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = root / "server.log"
    try:
        try:
            run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log.read_text() if log.exists() else ''}") from None
        run(bin_dir / "createdb", "-h", root, "-p", port, "-U", USER, DATABASE)
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": DATABASE,
            "DAGSTER_PG_USERNAME": USER,
            "DAGSTER_PG_PASSWORD": password,
        }
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
