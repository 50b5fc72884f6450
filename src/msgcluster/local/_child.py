"""Entry point of the local AWS server process started by :class:`msgcluster.local.LocalAWS`.

``python -m msgcluster.local._child --host 127.0.0.1 --port 0 [--no-patch] [--keep-alive]``

The child applies :mod:`msgcluster.local._sqs_patch` (unless ``--no-patch``), binds
the port (0 = any free port), then prints one line on stdout::

    msgcluster-moto ready host=127.0.0.1 port=40123 patched=1 keep_alive=0 pid=1234

and serves until SIGTERM/SIGINT, until its stdin reaches end-of-file (the
parent holds the other end of that pipe, so this happens when the parent
exits, even if it is killed), or until its parent process changes.
Anything printed after the ready line goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["EXIT_MISSING_DEPENDENCY", "INSTALL_HINT", "READY_PREFIX", "main"]

READY_PREFIX = "msgcluster-moto ready"
EXIT_MISSING_DEPENDENCY = 3
INSTALL_HINT = "pip install 'msgcluster[local]'"

_PARENT_POLL_SECONDS = 1.0


class _BodyReader:
    """The request body of one keep-alive request: never reads past Content-Length.

    Stands in for the handler's ``rfile`` while werkzeug runs the application,
    so werkzeug's post-response "discard what the client still sends" loop
    reads at most the rest of this body and never the next request.
    """

    def __init__(self, raw: Any, length: int) -> None:
        self._raw = raw
        self.remaining = length
        self.broken = False

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self._raw.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self._raw.readline, size)

    def _take(self, reader: Callable[[int], bytes], size: int | None) -> bytes:
        if self.remaining <= 0 or self.broken:
            return b""
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        try:
            data = reader(want)
        except OSError:
            data = b""
        if not data:
            self.broken = True
        self.remaining -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> bool:
        """Discard what the application did not read; False if the client went away."""
        while self.remaining > 0 and not self.broken:
            self.read(1 << 20)
        return not self.broken


def _framed_length(handler: Any) -> int:
    """The body length of a request whose connection can be kept, else negative."""
    if (
        handler.close_connection
        or handler.request_version != "HTTP/1.1"
        or "Transfer-Encoding" in handler.headers
    ):
        return -1
    try:
        return int(handler.headers.get("Content-Length") or 0)
    except ValueError:
        return -1


def _handler_classes(log_requests: bool) -> tuple[type[Any], type[Any]]:
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class Handler(MotoRequestHandler):
        """moto's handler, with the per-request access log optional."""

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if log_requests:
                super().log_request(code, size)

    class KeepAliveHandler(Handler):
        """HTTP/1.1 persistent connections for requests with a Content-Length body.

        werkzeug's dev server sends ``Connection: close`` on every response,
        because it cannot tell where a request body ends once the application
        stops reading. Here the body is framed by Content-Length, so it is
        drained exactly and the connection is kept. Requests with a
        Transfer-Encoding, HTTP/1.0 requests and requests asking to close keep
        werkzeug's behaviour.
        """

        protocol_version = "HTTP/1.1"
        # werkzeug writes the headers and the body separately: with Nagle's
        # algorithm on, the body of every response on a kept connection waits
        # for the client's delayed ACK (~40 ms).
        disable_nagle_algorithm = True
        _keep_alive = False

        def run_wsgi(self) -> None:
            self._keep_alive = False
            length = _framed_length(self)
            if length < 0:
                super().run_wsgi()
                return
            raw = self.rfile
            body = _BodyReader(raw, length)
            self.rfile = body  # type: ignore[assignment]
            self._keep_alive = True
            try:
                super().run_wsgi()
            finally:
                self.rfile = raw
                self._keep_alive = False
            if not body.drain():
                self.close_connection = True

        def send_header(self, keyword: str, value: str) -> None:
            if self._keep_alive and keyword.lower() == "connection" and value.lower() == "close":
                return
            super().send_header(keyword, value)

    return Handler, KeepAliveHandler


def _watch_parent(stop: Callable[[], None], parent_pid: int) -> None:
    """Call ``stop`` when stdin closes or the parent process goes away."""

    def stdin_eof() -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except (OSError, ValueError):
            pass
        stop()

    def parent_gone() -> None:
        while os.getppid() == parent_pid:
            if stopped.wait(_PARENT_POLL_SECONDS):
                return
        stop()

    stopped = threading.Event()
    threading.Thread(target=stdin_eof, name="msgcluster-stdin-watch", daemon=True).start()
    threading.Thread(target=parent_gone, name="msgcluster-parent-watch", daemon=True).start()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m msgcluster.local._child")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-patch", dest="patch", action="store_false")
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--log-requests", action="store_true")
    parser.add_argument("--no-watch-parent", dest="watch_parent", action="store_false")
    parser.add_argument("--emulate", default=None, help="an Emulation, as JSON")
    return parser.parse_args(argv)


def _stop_on_exit(server: Any, parent_pid: int | None) -> None:
    """Shut ``server`` down on SIGTERM/SIGINT and, given ``parent_pid``, with the parent."""
    stopping = threading.Lock()

    def stop() -> None:
        # shutdown() waits for serve_forever() to return: never call it on that thread.
        if stopping.acquire(blocking=False):
            threading.Thread(target=server.shutdown, name="msgcluster-shutdown").start()

    def on_signal(signum: int, frame: Any) -> None:
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if parent_pid is not None:
        _watch_parent(stop, parent_pid)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    parent_pid = os.getppid()
    try:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            create_backend_app,
        )
        from werkzeug.serving import make_server
    except ImportError as exc:
        print(
            f"msgcluster: the local AWS server needs moto[server] ({exc}); {INSTALL_HINT}",
            file=sys.stderr,
        )
        return EXIT_MISSING_DEPENDENCY

    from msgcluster.local import _dynamodb_patch, _sqs_patch

    if args.patch:
        _sqs_patch.apply()
        _dynamodb_patch.apply()

    handler, keep_alive_handler = _handler_classes(args.log_requests)
    app: Any = DomainDispatcherApplication(create_backend_app)
    if args.emulate:
        import msgspec

        from msgcluster.local._emulation import Emulation, EmulationMiddleware

        app = EmulationMiddleware(app, msgspec.json.decode(args.emulate, type=Emulation))
    server = make_server(
        args.host,
        args.port,
        app,
        threaded=True,
        request_handler=keep_alive_handler if args.keep_alive else handler,
    )
    port = int(server.server_port)
    # moto builds some URLs (Lambda, CloudFormation, Step Functions) from MOTO_PORT.
    os.environ["MOTO_PORT"] = str(port)

    _stop_on_exit(server, parent_pid if args.watch_parent else None)

    print(
        f"{READY_PREFIX} host={args.host} port={port} patched={int(_sqs_patch.is_applied())}"
        f" keep_alive={int(args.keep_alive)} pid={os.getpid()}",
        flush=True,
    )
    # From here on stdout is the parent's business no more: send it to stderr.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
