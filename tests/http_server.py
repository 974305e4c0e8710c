"""A local HTTP server for tests: serves a folder on 127.0.0.1 at a free port.

Tests must never reach the internet; this stands in for weight hosts. Beyond
plain files it can redirect, answer slowly, hold answers until released, and
drop a connection mid-file, and it records every request it receives.

Use the ``http_server`` fixture (import it into a test module or conftest:
``from http_server import http_server``) or the class directly:

>>> import urllib.request, tempfile
>>> with tempfile.TemporaryDirectory() as root, LocalHTTPServer(root) as server:
...     _ = server.add_file("a/b.bin", b"payload")
...     _ = server.redirect("/old.bin", "/a/b.bin")
...     data = urllib.request.urlopen(server.url("old.bin"), timeout=5).read()
...     (data, server.requests)
(b'payload', ['/old.bin', '/a/b.bin'])
"""

from __future__ import annotations

import http.server
import pathlib
import threading
import time
import urllib.parse
from typing import Dict, List, Optional

import pytest

__all__ = ["LocalHTTPServer", "http_server"]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "LocalHTTPServer"

    def handle_error(self, request, client_address):
        # A client that gave up (timeout tests) makes writes fail: expected here.
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        owner._record(path)
        if path in owner.redirects:
            code, location = owner.redirects[path]
            self.send_response(code)
            self.send_header("Location", owner.url(location.lstrip("/")))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = owner.resolve(path)
        if file is None:
            self.send_error(404, "Not Found")
            return
        # Hold the answer while the test keeps the gate closed (bounded, so a
        # failing test cannot hang the server thread for ever).
        owner.gate.wait(timeout=60)
        data = file.read_bytes()
        cut = owner.truncate.get(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        body = data if cut is None else data[:cut]
        step = owner.chunk_size
        for start in range(0, len(body), step):
            self.wfile.write(body[start:start + step])
            self.wfile.flush()
            if owner.chunk_delay:
                time.sleep(owner.chunk_delay)
        if cut is not None:
            self.close_connection = True  # fewer bytes than Content-Length promised


class LocalHTTPServer:
    """Serves ``root`` over HTTP on 127.0.0.1, in a daemon thread.

    Attributes:
        root: the folder served (``url("a/b")`` serves ``root/a/b``).
        requests: the paths of all GET requests so far, in order.
        redirects: ``{path: (code, target_path)}``; see :meth:`redirect`.
        truncate: ``{path: n}``: send only ``n`` bytes of that file, then close
            the connection although Content-Length promised the whole file.
        chunk_delay: seconds to sleep after each ``chunk_size`` bytes sent (a
            slow server).
        gate: a ``threading.Event``; while cleared, file answers wait (a server
            that accepted the request but has not answered yet).
    """

    def __init__(self, root, *, chunk_delay: float = 0.0, chunk_size: int = 64 * 1024):
        self.root = pathlib.Path(root)
        self.chunk_delay = chunk_delay
        self.chunk_size = chunk_size
        self.requests: List[str] = []
        self.redirects: Dict[str, tuple] = {}
        self.truncate: Dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self._seen = threading.Condition()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._port: Optional[int] = None

    def start(self) -> "LocalHTTPServer":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._port = self._server.server_address[1]
        # A short poll interval: stop() (shutdown) waits up to one interval.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02},
                                        name="LocalHTTPServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving; later requests to its port are refused. Idempotent."""
        if self._server is None:
            return
        self.gate.set()  # release held handlers so they can finish
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> "LocalHTTPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port chosen at :meth:`start` (kept after :meth:`stop`)."""
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def url(self, name: str) -> str:
        """The URL of ``root/name`` (also valid after :meth:`stop`, then refused)."""
        return f"{self.base_url}/{urllib.parse.quote(name.lstrip('/'))}"

    def add_file(self, name: str, data: bytes) -> str:
        """Writes ``data`` to ``root/name`` and returns its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.url(name)

    def redirect(self, path: str, target: str, code: int = 302) -> str:
        """Makes GET ``path`` answer ``code`` to ``target``; returns ``path``'s URL."""
        self.redirects["/" + path.lstrip("/")] = (code, "/" + target.lstrip("/"))
        return self.url(path)

    def resolve(self, path: str) -> Optional[pathlib.Path]:
        """The served file for a URL path, or None (also for paths escaping root)."""
        relative = urllib.parse.unquote(path).lstrip("/")
        file = (self.root / relative).resolve()
        root = self.root.resolve()
        if root not in file.parents or not file.is_file():
            return None
        return file

    def count(self, name: str) -> int:
        """How many GET requests named ``root/name`` so far."""
        return self.requests.count("/" + urllib.parse.quote(name.lstrip("/")))

    def wait_for_requests(self, n: int, timeout: float = 30.0) -> bool:
        """Waits until at least ``n`` requests arrived; returns whether they did."""
        with self._seen:
            return self._seen.wait_for(lambda: len(self.requests) >= n, timeout)

    def _record(self, path: str) -> None:
        with self._seen:
            self.requests.append(path)
            self._seen.notify_all()


@pytest.fixture
def http_server(tmp_path_factory):
    """A started :class:`LocalHTTPServer` over an empty temporary folder."""
    with LocalHTTPServer(tmp_path_factory.mktemp("http_root")) as server:
        yield server

