"""A counting HTTP/1.1 reverse proxy in front of the local AWS server.

Every request a client sends through it is forwarded to the upstream and
counted by ``service.Operation``: the service from the SigV4 credential scope
of the ``Authorization`` header, the operation from ``X-Amz-Target`` (JSON
protocol), else ``Action=`` (query protocol), else the HTTP method (S3's REST
API). boto3, aiobotocore and pycurl (kombu's async SQS client) all reach it
when their endpoint is :attr:`CountingProxy.url`, so peers built on different
HTTP stacks are counted the same way, on the wire.

It can also deliver messages twice: every ``SendMessage`` /
``SendMessageBatch`` to a queue named in ``duplicate_queues`` is forwarded
twice, so SQS holds two copies of every message sent (the client sees the
first answer; the second copy is counted apart, as ``injected``, since no
client sent it).

Stdlib only. It runs in threads of this process (one accept thread, one per
client connection, each with its own kept-alive upstream connection), so it
never blocks an event loop.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["CountingProxy"]

_CREDENTIAL_SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")
# Hop-by-hop headers, and the framing this proxy sets itself.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade", "expect"}
)
_SENDS = frozenset({"SendMessage", "SendMessageBatch"})
# Longer than any long poll (WaitTimeSeconds is at most 20 s).
_UPSTREAM_TIMEOUT = 60.0


def _label(headers: Any, path: str, body: bytes) -> tuple[str, str]:
    """(service, operation) of one request."""
    found = _CREDENTIAL_SERVICE.search(headers.get("Authorization") or "")
    service = found.group(1) if found else "unsigned"
    target = headers.get("X-Amz-Target")
    if target:
        return service, target.rsplit(".", 1)[-1]
    query = parse_qs(urlsplit(path).query)
    if "Action" not in query and body and b"Action=" in body[:200]:
        query = parse_qs(body.decode("utf-8", "replace"))
    if "Action" in query:
        return service, query["Action"][0]
    return service, "REST"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, proxy: CountingProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-request (a worker shutting down)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self.upstream is not None:
            self.upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _any(self) -> None:
        body = self._body()
        proxy = self.server.proxy
        service, operation = _label(self.headers, self.path, body)
        if service == "s3":
            operation = self.command  # S3's REST API: the method says enough here
        proxy._count(f"{service}.{operation}")
        status, reason, headers, answer = self._forward(body)
        if operation in _SENDS and proxy.duplicate_queues and status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                url = json.loads(body).get("QueueUrl", "")
                if url.rstrip("/").rsplit("/", 1)[-1] in proxy.duplicate_queues:
                    self._forward(body)  # the second copy; its answer is dropped
                    proxy._count(f"{service}.{operation}", injected=True)
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _any

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
        for attempt in range(2):
            reused = self.upstream is not None
            if self.upstream is None:
                host, port = self.server.proxy.upstream
                self.upstream = http.client.HTTPConnection(host, port, timeout=_UPSTREAM_TIMEOUT)
            conn = self.upstream
            try:
                # The client's Host header goes through unchanged: it is signed.
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                response = conn.getresponse()
                answer = response.read()
                if response.will_close:
                    conn.close()
                    self.upstream = None
                return response.status, response.reason, response.getheaders(), answer
            except (ConnectionError, http.client.BadStatusLine):
                conn.close()
                self.upstream = None
                # A kept-alive connection the server had closed meanwhile: once more.
                if attempt or not reused:
                    raise
        raise AssertionError("unreachable")


class CountingProxy:
    """``with CountingProxy(aws.endpoint_url) as proxy:`` point clients at ``proxy.url``."""

    def __init__(self, upstream_url: str, *, duplicate_queues: Collection[str] = ()) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        #: Names of the queues whose sends are forwarded twice (change it at will).
        self.duplicate_queues: set[str] = set(duplicate_queues)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    def _count(self, label: str, *, injected: bool = False) -> None:
        with self._lock:
            (self._injected if injected else self._counts)[label] += 1

    def counts(self, *, reset: bool = False) -> Counter[str]:
        """Requests clients sent, by ``service.Operation``, since the last reset."""
        with self._lock:
            counts = Counter(self._counts)
            if reset:
                self._counts.clear()
                self._injected.clear()
        return counts

    def injected(self) -> Counter[str]:
        """Copies the proxy itself sent (the second delivery of each send)."""
        with self._lock:
            return Counter(self._injected)

    def start(self) -> Self:
        self._server = _Server(self)
        threading.Thread(target=self._server.serve_forever, name="countproxy", daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
