"""The second emulator: LocalStack for SQS and S3, moto for DynamoDB, behind one endpoint.

``make test-localstack`` sets ``MSGCLUSTER_TEST_EMULATOR=localstack`` and
``MSGCLUSTER_LOCALSTACK_PYTHON`` (the interpreter of its own venv: LocalStack
pins an older botocore than aiobotocore allows). The session's ``local_aws``
is then a :class:`RoutedAWS`: one endpoint, a :class:`~faultproxy.FaultProxy`
with routes, that sends SQS and S3 requests to LocalStack and DynamoDB's to
moto, so every test runs unchanged against both emulators.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from faultproxy import FaultProxy

from msgcluster.local import LocalAWS

__all__ = ["EMULATOR", "RoutedAWS", "emulated_aws"]

EMULATOR = os.environ.get("MSGCLUSTER_TEST_EMULATOR", "moto")


class RoutedAWS:
    """A running LocalAWS whose endpoint is the router (everything else delegated)."""

    def __init__(self, aws: LocalAWS, endpoint_url: str) -> None:
        self._aws = aws
        self.endpoint_url = endpoint_url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aws, name)

    def client_kwargs(self) -> dict[str, str]:
        return {**self._aws.client_kwargs(), "endpoint_url": self.endpoint_url}

    def settings(self) -> dict[str, str]:
        return {**self._aws.settings(), "endpoint_url": self.endpoint_url}

    def env(self) -> dict[str, str]:
        return {**self._aws.env(), "AWS_ENDPOINT_URL": self.endpoint_url}


@contextlib.contextmanager
def emulated_aws() -> Iterator[Any]:
    """The session's emulated AWS: moto alone, or moto behind a LocalStack router."""
    with LocalAWS() as aws:
        if EMULATOR == "moto":
            yield aws
            return
        if EMULATOR != "localstack":
            raise RuntimeError(f"MSGCLUSTER_TEST_EMULATOR must be moto or localstack: {EMULATOR}")
        with FaultProxy(aws.endpoint_url) as router, localstack(public=router.url) as url:
            router.routes = {"sqs": _address(url), "s3": _address(url)}
            yield RoutedAWS(aws, router.url)


def _address(url: str) -> tuple[str, int, str]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port), f"{host}:{port}"


@contextlib.contextmanager
def localstack(*, public: str, timeout: float = 60.0) -> Iterator[str]:
    """A LocalStack (SQS and S3 only) in host mode on a free port; yields its URL.

    ``public`` is the address queue URLs name (the router), so a client that
    takes its endpoint from a queue URL still goes through the router.
    """
    python = os.environ.get("MSGCLUSTER_LOCALSTACK_PYTHON")
    if not python:
        raise RuntimeError("set MSGCLUSTER_LOCALSTACK_PYTHON (make test-localstack does)")
    port = _free_port()
    home = tempfile.mkdtemp(prefix="localstack-")
    env = {
        **os.environ,
        "SERVICES": "sqs,s3",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "LOCALSTACK_HOST": public.removeprefix("http://"),
        "SQS_ENDPOINT_STRATEGY": "path",
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "LOCALSTACK_VOLUME_DIR": home,
        "FILESYSTEM_ROOT": home,
        "HOME": home,
    }
    log = open(os.path.join(home, "localstack.log"), "wb")  # noqa: SIM115 (kept for the run)
    proc = subprocess.Popen(
        [python, "-m", "localstack.runtime.main"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, timeout, log.name)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LocalStack exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/_localstack/health", timeout=2) as response:
                services = json.load(response).get("services", {})
            if all(services.get(s) in ("available", "running") for s in ("sqs", "s3")):
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"LocalStack did not become ready in {timeout:.0f} s; see {log}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
