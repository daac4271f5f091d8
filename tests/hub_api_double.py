"""A test double of the Hugging Face Hub's HTTP API: just `model_info` by revision.

The real `huggingface_hub` client talks to it over loopback, so the sensor's handling of
a slow, failing or hanging Hub is exercised through the real client code; only the
server is fake, because the real Hub cannot be reached from here.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class HubApiDouble:
    """Answers `GET /api/models/<repo_id>/revision/<ref>` with `shas[repo_id]`.

    Every answer waits `delay_s`; repos in `failing` get HTTP 500 and repos in `hanging`
    wait `hang_s` before answering. `requests` counts answers per repo id.
    """

    def __init__(self, delay_s: float = 0.0, hang_s: float = 8.0):
        self.shas: dict[str, str] = {}
        self.failing: set[str] = set()
        self.hanging: set[str] = set()
        self.delay_s = delay_s
        self.hang_s = hang_s
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubApiDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str) -> tuple[int, dict, dict]:
        prefix = "/api/models/"
        if not path.startswith(prefix) or "/revision/" not in path:
            return 404, {}, {"error": "not found"}
        repo_id, _, ref = path[len(prefix) :].partition("/revision/")
        repo_id, ref = unquote(repo_id), unquote(ref)
        with self._lock:
            self.requests[repo_id] = self.requests.get(repo_id, 0) + 1
        time.sleep(self.hang_s if repo_id in self.hanging else self.delay_s)
        if repo_id in self.failing:
            return 500, {}, {"error": "Internal Error"}
        if repo_id not in self.shas:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        return 200, {}, {"id": repo_id, "sha": self.shas[repo_id]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                status, headers, body = double._answer(self.path.split("?")[0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler
