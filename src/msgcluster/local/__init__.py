"""An embedded local AWS (moto server) for tests, the demo and development.

::

    with LocalAWS() as aws:                 # or: async with LocalAWS() as aws:
        session.create_client("sqs", **aws.client_kwargs())

``python -m msgcluster.local [--port 5000] [--host 127.0.0.1]`` runs one in the
foreground until Ctrl-C / SIGTERM.

The server runs ``moto_server`` in a child process (client and server then use
separate cores), on a free loopback port by default, with
:mod:`msgcluster.local._sqs_patch` applied in the child so SQS calls cost the same
at any queue depth. The child exits when :meth:`LocalAWS.stop` is called, when
the interpreter exits, or when this process dies.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Self, TypedDict

import anyio
import anyio.to_thread
import msgspec

from msgcluster._errors import ConfigurationError
from msgcluster.local._child import EXIT_MISSING_DEPENDENCY, INSTALL_HINT, READY_PREFIX
from msgcluster.local._emulation import STATS_PATH, Emulation

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DEFAULT_KEEP_ALIVE", "Emulation", "LocalAWS", "LocalAWSError", "main"]

#: Whether the child keeps HTTP/1.1 connections open between requests (plain
#: moto closes every one). Enabled: under aiobotocore with retries off, mixed
#: load (1,000 concurrent SendMessageBatch, 10 concurrent long polls, 2 MiB S3
#: PUT/GET/HEAD/Range with ``Expect: 100-continue``, errors returned before the
#: body is read, DynamoDB conditional puts, reuse after idling) ran without a
#: single error, and it is faster on moto 5.2.5 / 2 cores (8 concurrent workers:
#: SendMessageBatch ~2,800 vs ~2,100 msgs/s, receive+delete ~1,150 vs ~1,000
#: msgs/s; sequential calls ~250 vs ~230 req/s). It also avoids thousands of
#: sockets in TIME_WAIT during long runs. See ``_child.KeepAliveHandler``.
DEFAULT_KEEP_ALIVE: Final = True

_REQUIRED_MODULES: Final = ("moto", "werkzeug", "flask", "flask_cors")
_STDERR_TAIL: Final = 4000


class ClientSettings(TypedDict):
    """What :meth:`LocalAWS.settings` returns: ``Client(**aws.settings())``."""

    endpoint_url: str
    region: str
    aws_access_key_id: str
    aws_secret_access_key: str


class LocalAWSError(ConfigurationError):
    """The local AWS server could not be started (or is not running)."""


def _check_installed() -> None:
    missing = [name for name in _REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise LocalAWSError(
            f"the local AWS server needs moto[server] (missing: {', '.join(missing)}); "
            f"install it with: {INSTALL_HINT}"
        )


def _connect_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Child:
    """The running server process and the files tied to it (no reference to LocalAWS)."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr: IO[bytes] | None) -> None:
        self.proc = proc
        self.stderr = stderr
        self._lock = threading.Lock()

    def stderr_text(self) -> str:
        if self.stderr is None or self.stderr.closed:
            return ""
        try:
            self.stderr.flush()
            self.stderr.seek(0)
            text = self.stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return text[-_STDERR_TAIL:].strip()

    def stop(self, timeout: float = 5.0, close_log: bool = True) -> None:
        """Terminate, wait, kill on timeout, reap. Safe to call any number of times."""
        with self._lock:
            proc = self.proc
            if proc.returncode is None:
                # Closing stdin alone stops the child; SIGTERM makes it prompt.
                with contextlib.suppress(OSError):
                    if proc.stdin is not None:
                        proc.stdin.close()
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout, self.stderr if close_log else None):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()


class LocalAWS:
    """moto server in a child process, on loopback.

    Attributes (valid while running): ``endpoint_url``, ``host``, ``port``,
    ``pid``, ``patched`` (the child reports the SQS patch applied),
    ``keep_alive``; always: ``region``, ``aws_access_key_id``,
    ``aws_secret_access_key``, ``aws_session_token``.
    """

    region: str = "us-east-1"
    aws_access_key_id: str = "testing"
    aws_secret_access_key: str = "testing"
    aws_session_token: str = "testing"

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        patch: bool = True,
        *,
        keep_alive: bool = DEFAULT_KEEP_ALIVE,
        startup_timeout: float = 30.0,
        log_requests: bool = False,
        emulation: Emulation | None = None,
    ) -> None:
        self.emulation = emulation
        self.host = host
        self.requested_port = port or 0
        self.patch = patch
        self.keep_alive = keep_alive
        self.startup_timeout = startup_timeout
        self.log_requests = log_requests
        self.port: int | None = None
        self.pid: int | None = None
        self.patched: bool | None = None
        self._child: _Child | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        child = self._child
        return child is not None and child.proc.poll() is None

    @property
    def endpoint_url(self) -> str:
        if self._child is None or self.port is None:
            raise LocalAWSError("LocalAWS is not running: call start() or use it as a context")
        return f"http://{_url_host(_connect_host(self.host))}:{self.port}"

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``session.create_client(service, **aws.client_kwargs())``."""
        return {
            "region_name": self.region,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
        }

    def settings(self) -> ClientSettings:
        """Keyword arguments for ``msgcluster.Client(**aws.settings())``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
        }

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs and CLIs at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
        }

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.running else "stopped"
        return f"<LocalAWS {where} patched={self.patched} pid={self.pid}>"

    # ------------------------------------------------------------ start/stop

    def start(self) -> Self:
        """Start the server and wait until it answers HTTP. No-op if running."""
        with self._lock:
            if self.running:
                return self
            self._stop_locked()
            _check_installed()
            self._start_locked()
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (terminate, then kill after ``timeout``). Idempotent."""
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float = 5.0) -> None:
        child, self._child = self._child, None
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        if child is not None:
            child.stop(timeout)
        self.port = None
        self.pid = None

    def _command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "msgcluster.local._child",
            "--host",
            self.host,
            "--port",
            str(self.requested_port),
        ]
        if not self.patch:
            cmd.append("--no-patch")
        if self.keep_alive:
            cmd.append("--keep-alive")
        if self.log_requests:
            cmd.append("--log-requests")
        if self.emulation is not None:
            cmd += ["--emulate", msgspec.json.encode(self.emulation).decode()]
        return cmd

    def emulation_stats(self, *, reset: bool = False) -> dict[str, Any]:
        """The emulation's counters (see :class:`Emulation`); ``reset`` zeroes them."""
        if self.emulation is None:
            raise LocalAWSError("this LocalAWS runs without an emulation: LocalAWS(emulation=...)")
        request = urllib.request.Request(
            self.endpoint_url + STATS_PATH, method="POST" if reset else "GET"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            stats: dict[str, Any] = json.load(response)
        return stats

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The child must import this very msgcluster, installed or not.
        package_root = str(Path(__file__).resolve().parent.parent)
        parts = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start_locked(self) -> None:
        stderr: IO[bytes] | None = None
        if not self.log_requests:
            # Closed by _Child.stop(); a file, not a pipe, so the child never blocks on it.
            stderr = tempfile.TemporaryFile(prefix="msgcluster-moto-", suffix=".log")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self._child_env(),
                start_new_session=True,
            )
        except OSError as exc:
            if stderr is not None:
                stderr.close()
            raise LocalAWSError(f"cannot start the local AWS server: {exc}") from exc
        child = _Child(proc, stderr)
        self._child = child
        self._finalizer = weakref.finalize(self, child.stop)
        try:
            self._await_ready(child)
        except BaseException:
            self._stop_locked()
            raise

    def _await_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + self.startup_timeout
        line = self._read_ready_line(child, deadline)
        fields = dict(
            item.split("=", 1) for item in line[len(READY_PREFIX) :].split() if "=" in item
        )
        try:
            self.port = int(fields["port"])
        except (KeyError, ValueError):
            raise self._failure(child, f"unexpected ready line {line!r}") from None
        self.pid = child.proc.pid
        self.patched = fields.get("patched") == "1"
        self.keep_alive = fields.get("keep_alive") == "1"
        if child.proc.stdout is not None:
            child.proc.stdout.close()
        self._await_http(child, deadline)

    def _read_ready_line(self, child: _Child, deadline: float) -> str:
        stdout = child.proc.stdout
        assert stdout is not None
        lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()

        def pump() -> None:
            with contextlib.suppress(OSError, ValueError):
                for raw in iter(stdout.readline, b""):
                    lines.put(raw)
                    if raw.startswith(READY_PREFIX.encode()):
                        return
            lines.put(b"")

        threading.Thread(target=pump, name="msgcluster-moto-ready", daemon=True).start()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(child, f"no ready line within {self.startup_timeout:g}s")
            try:
                raw = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if not raw:
                child.proc.wait()
                raise self._failure(child, "the server process exited before it was ready")
            text = raw.decode("utf-8", "replace").strip()
            if text.startswith(READY_PREFIX):
                return text

    def _await_http(self, child: _Child, deadline: float) -> None:
        assert self.port is not None
        host = _connect_host(self.host)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise self._failure(child, "the server process exited before it answered HTTP")
            conn = http.client.HTTPConnection(host, self.port, timeout=2.0)
            try:
                conn.request("GET", "/moto-api/")
                if conn.getresponse().status < 500:
                    return
            except (OSError, http.client.HTTPException) as exc:
                last_error = exc
            finally:
                conn.close()
            time.sleep(0.05)
        raise self._failure(
            child, f"the server did not answer HTTP within {self.startup_timeout:g}s ({last_error})"
        )

    def _failure(self, child: _Child, what: str) -> LocalAWSError:
        child.stop(timeout=2.0, close_log=False)
        stderr = child.stderr_text()
        child.stop()
        if child.proc.returncode == EXIT_MISSING_DEPENDENCY:
            what += f"; moto[server] is not importable there: {INSTALL_HINT}"
        detail = f"\n--- server stderr ---\n{stderr}" if stderr else ""
        return LocalAWSError(
            f"local AWS server (pid {child.proc.pid}, exit code {child.proc.returncode}) "
            f"failed to start: {what}{detail}"
        )

    # --------------------------------------------------------------- context

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        try:
            await anyio.to_thread.run_sync(self.start)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)


def main(argv: list[str] | None = None) -> None:
    """``python -m msgcluster.local``: run a local AWS in the foreground."""
    parser = argparse.ArgumentParser(
        prog="python -m msgcluster.local",
        description="Run moto (patched for msgcluster) until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--no-patch", dest="patch", action="store_false", help="plain moto")
    parser.add_argument("--log-requests", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and then
    # Python never raises KeyboardInterrupt.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with LocalAWS(
            port=args.port, host=args.host, patch=args.patch, log_requests=args.log_requests
        ) as aws:
            print(f"local AWS (moto) listening on {aws.endpoint_url}  (patched={aws.patched})")
            print(f"export AWS_ENDPOINT_URL={aws.endpoint_url}")
            print(
                f"export AWS_DEFAULT_REGION={aws.region} AWS_ACCESS_KEY_ID="
                f"{aws.aws_access_key_id} AWS_SECRET_ACCESS_KEY={aws.aws_secret_access_key}"
            )
            print("Ctrl-C to stop", flush=True)
            while not stop.is_set() and aws.running:
                stop.wait(0.5)
            if not aws.running:
                raise SystemExit("local AWS server exited unexpectedly")
    except KeyboardInterrupt:
        pass
    except LocalAWSError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
