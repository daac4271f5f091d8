"""A TEST DOUBLE of the Hugging Face Hub's HTTP API, serving git repos from disk.

The real Hub cannot be reached here, so `HuggingFaceHub` (the real `huggingface_hub`
client) is tested against this server. It implements only what `model_info` and
`snapshot_download` call: repo info at a revision, the recursive tree listing, and
`resolve` downloads (HEAD and GET) with the Hub's headers and error codes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = r"(?P<repo>[^/]+/[^/]+)"
INFO = re.compile(rf"^/api/models/{REPO}/revision/(?P<rev>[^/]+)$")
TREE = re.compile(rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)$")
RESOLVE = re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class FakeHub:
    """Serves `<root>/<org>/<name>` git repos on a free loopback port."""

    def __init__(self, root: Path, token: str | None = None):
        self.root = root
        self.token = token
        self.requests: list[str] = []
        self.answered: list[str] = []  # the same, once the answer has been sent
        # A slow or broken Hub, per repo id: seconds before answering, or HTTP 500.
        self.delays: dict[str, float] = {}
        self.failing: set[str] = set()
        self.fail_next = 0  # answer this many requests with `fail_status`:
        self.fail_status = 503  # 503 as an overloaded Hub does, 429 when rate-limiting
        # A hanging Hub without a clock: these repos answer only once `release()` is called.
        self.held: set[str] = set()
        self._released = threading.Event()
        # Answers wait until this many requests were in flight at once (a barrier), so a
        # test sees parallel requests however slow the machine is; `most_in_flight` shows it.
        self.together = 0
        self.most_in_flight = 0
        self._in_flight = 0
        self._met = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()  # held answers end first: closing the server waits for them
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self._released.set()

    def _enter(self) -> None:
        with self._met:
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
            self._met.notify_all()
            self._met.wait_for(lambda: self.most_in_flight >= self.together, timeout=60)

    def _leave(self) -> None:
        with self._met:
            self._in_flight -= 1

    def _git(self, repo: str, *args: str) -> bytes | None:
        done = subprocess.run(
            ["git", "-C", str(self.root / repo), *args], capture_output=True, check=False
        )
        return done.stdout if done.returncode == 0 else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(
                self,
                status: int,
                body: bytes = b"",
                headers: dict | None = None,
                error_code: str | None = None,
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                    body = json.dumps({"error": error_code}).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                hub.answered.append(f"{self.command} {unquote(urlparse(self.path).path)}")

            def _resolve(self, repo: str, rev: str) -> str | None:
                time.sleep(hub.delays.get(repo, hub.delays.get("*", 0.0)))
                if repo in hub.held:
                    hub._released.wait(timeout=600)
                if repo in hub.failing:
                    self._send(500, b"Internal Error")
                    return None
                if not (hub.root / repo).is_dir():
                    self._send(404, error_code="RepoNotFound")
                    return None
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._send(401, error_code="RepoNotFound")
                    return None
                sha = hub._git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
                if sha is None:
                    self._send(404, error_code="RevisionNotFound")
                    return None
                return sha.decode().strip()

            def _files(self, repo: str, sha: str) -> list[str]:
                return hub._git(repo, "ls-tree", "-r", "--name-only", sha).decode().split()

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                hub._enter()
                try:
                    self._answer(path)
                finally:
                    hub._leave()

            def _answer(self, path: str) -> None:
                if hub.fail_next > 0:
                    hub.fail_next -= 1
                    self._send(hub.fail_status, b"overloaded")
                    return
                for pattern, serve in (
                    (INFO, self._info),
                    (TREE, self._tree),
                    (RESOLVE, self._file),
                ):
                    if match := pattern.match(path):
                        sha = self._resolve(match["repo"], match["rev"])
                        if sha is not None:
                            serve(match, sha)
                        return
                self._send(404, error_code="EntryNotFound")

            def _json(self, obj) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _info(self, match, sha: str) -> None:
                files = self._files(match["repo"], sha)
                self._json(
                    {
                        "id": match["repo"],
                        "sha": sha,
                        "private": False,
                        "siblings": [{"rfilename": f} for f in files],
                    }
                )

            def _tree(self, match, sha: str) -> None:
                entries = []
                for name in self._files(match["repo"], sha):
                    data = hub._git(match["repo"], "show", f"{sha}:{name}")
                    oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                    entries.append({"type": "file", "path": name, "size": len(data), "oid": oid})
                self._json(entries)

            def _file(self, match, sha: str) -> None:
                data = hub._git(match["repo"], "show", f"{sha}:{match['file']}")
                if data is None:
                    self._send(404, error_code="EntryNotFound")
                    return
                etag = hashlib.sha256(data).hexdigest()
                self._send(
                    200,
                    data,
                    {
                        "X-Repo-Commit": sha,
                        "ETag": f'"{etag}"',
                        "Content-Type": "application/octet-stream",
                    },
                )

        return Handler
