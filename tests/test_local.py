"""The embedded local AWS (msgcluster.local) and the moto SQS patch it applies."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiobotocore.session
import pytest
from botocore.exceptions import ClientError

import msgcluster
from msgcluster import local
from msgcluster.local import LocalAWS, LocalAWSError, _sqs_patch

moto_models = pytest.importorskip("moto.sqs.models")

SRC = str(Path(msgcluster.__file__).resolve().parent.parent)


# --------------------------------------------------------------------------- #
# helpers                                                                      #
# --------------------------------------------------------------------------- #


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # An exited process nobody reaped yet (e.g. reparented to a PID 1 that does not reap).
    with contextlib.suppress(OSError):
        if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return True
    return False


def _wait_gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _process_gone(pid):
            return True
        time.sleep(0.05)
    return _process_gone(pid)


def _answers_http(aws: LocalAWS) -> int:
    assert aws.port is not None
    conn = http.client.HTTPConnection("127.0.0.1", aws.port, timeout=5)
    try:
        conn.request("GET", "/moto-api/")
        return conn.getresponse().status
    finally:
        conn.close()


def _client(aws: LocalAWS, service: str) -> Any:
    session = aiobotocore.session.get_session()
    return session.create_client(
        service,
        region_name="us-east-1",
        endpoint_url=aws.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# --------------------------------------------------------------------------- #
# start / stop                                                                 #
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def aws() -> Any:
    with LocalAWS() as server:
        yield server


def test_start_stop_sync() -> None:
    server = LocalAWS()
    with server as aws:
        assert aws is server
        assert aws.running
        assert isinstance(aws.port, int)
        assert aws.port > 0
        assert aws.endpoint_url == f"http://127.0.0.1:{aws.port}"
        assert aws.region == "us-east-1"
        assert aws.aws_access_key_id == "testing"
        assert aws.aws_secret_access_key == "testing"
        assert aws.patched is True
        assert _answers_http(aws) == 200
        pid = aws.pid
        assert pid is not None
        assert not _process_gone(pid)
    assert not server.running
    # stop() reaps the child: the pid is gone at once, not a zombie
    assert _process_gone(pid)
    server.stop()
    server.stop()
    with pytest.raises(LocalAWSError):
        _ = server.endpoint_url


def test_start_is_idempotent_and_restartable() -> None:
    aws = LocalAWS()
    try:
        aws.start()
        first = aws.pid
        aws.start()
        assert aws.pid == first
        aws.stop()
        assert first is not None
        assert _process_gone(first)
        aws.start()
        assert aws.pid != first
        assert _answers_http(aws) == 200
    finally:
        aws.stop()


async def test_start_stop_async() -> None:
    async with LocalAWS() as aws:
        assert aws.running
        assert aws.patched is True
        pid = aws.pid
        async with _client(aws, "sqs") as sqs:
            url = (await sqs.create_queue(QueueName="async-start"))["QueueUrl"]
            assert url.endswith("/async-start")
    assert pid is not None
    assert _process_gone(pid)


def test_unpatched_child_reports_it() -> None:
    with LocalAWS(patch=False) as aws:
        assert aws.patched is False
        assert _answers_http(aws) == 200


def test_fixed_port_in_use_reports_child_stderr() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LocalAWSError) as info:
            LocalAWS(port=port, startup_timeout=20).start()
    message = str(info.value)
    assert "exited before it was ready" in message
    assert "Address already in use" in message


def test_missing_moto_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = local.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "moto" else real(name, *args)

    monkeypatch.setattr(local.importlib.util, "find_spec", find_spec)
    with pytest.raises(LocalAWSError, match=r"pip install 'msgcluster\[local\]'"):
        LocalAWS().start()


_ORPHAN_SCRIPT = """
import os, signal, sys
from msgcluster.local import LocalAWS
aws = LocalAWS().start()
print(aws.pid, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_child_exits_with_its_parent(how: str) -> None:
    """SIGKILLed parent: the child sees stdin close; normal exit: the finalizer stops it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.run(
        [sys.executable, "-c", _ORPHAN_SCRIPT, how],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    child_pid = int(parent.stdout.split()[0])
    if how == "kill":
        assert parent.returncode == -signal.SIGKILL
    else:
        assert parent.returncode == 0, parent.stderr
    assert _wait_gone(child_pid), f"moto child {child_pid} outlived its parent"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_main_runs_in_foreground_until_signalled(signum: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgcluster.local", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        export = proc.stdout.readline()
        assert "patched=True" in first
        assert export.startswith("export AWS_ENDPOINT_URL=http://127.0.0.1:")
        port = int(export.strip().rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/moto-api/")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "server closed the connection"
    return chunk


def _raw_exchange(sock: socket.socket, request: bytes) -> tuple[bytes, bytes]:
    """Send one request, read one Content-Length-framed response: (head, body)."""
    sock.sendall(request)
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            data += _recv(sock)
        head, _, data = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 100"):  # skip "100 Continue"
            break
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(data) < length:
        data += _recv(sock)
    assert len(data) == length, "more bytes than the response announced"
    return head, data


def test_keep_alive_reuses_connections(aws: LocalAWS) -> None:
    """One socket, several requests, including a body the server answers without reading."""
    assert aws.keep_alive
    assert aws.port is not None
    host = f"127.0.0.1:{aws.port}".encode()
    unread = b"x" * 300_000
    with socket.create_connection(("127.0.0.1", aws.port), timeout=10) as sock:
        for _ in range(3):
            head, body = _raw_exchange(
                sock, b"GET /moto-api/ HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
            )
            assert head.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in head.lower()
            # an error answer to a PUT: the body must be drained, read by moto or not
            head, body = _raw_exchange(
                sock,
                b"PUT /no-such-bucket-ka/key HTTP/1.1\r\nHost: "
                + host
                + b"\r\nExpect: 100-continue\r\nContent-Length: "
                + str(len(unread)).encode()
                + b"\r\n\r\n"
                + unread,
            )
            assert head.startswith(b"HTTP/1.1 404"), head
            assert b"NoSuchBucket" in body
    # a client asking to close gets its connection closed
    with socket.create_connection(("127.0.0.1", aws.port), timeout=10) as sock:
        head, _ = _raw_exchange(
            sock, b"GET /moto-api/ HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 200")
        assert sock.recv(1) == b""


# --------------------------------------------------------------------------- #
# SQS semantics through the launched (patched) server                          #
# --------------------------------------------------------------------------- #


async def _counts(sqs: Any, url: str) -> tuple[int, int, int]:
    attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        int(attrs["ApproximateNumberOfMessagesDelayed"]),
    )


async def _send(sqs: Any, url: str, n: int, **extra: Any) -> None:
    for start in range(0, n, 10):
        entries = [
            {"Id": str(i), "MessageBody": f"body-{start + i}", **extra}
            for i in range(min(10, n - start))
        ]
        resp = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not resp.get("Failed")


async def test_sqs_counts_delete_and_visibility(aws: LocalAWS) -> None:
    async with _client(aws, "sqs") as sqs:
        url = (await sqs.create_queue(QueueName="semantics"))["QueueUrl"]
        await _send(sqs, url, 50)
        assert await _counts(sqs, url) == (50, 0, 0)

        got = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300)
        received = got["Messages"]
        assert len(received) == 10
        await _send(sqs, url, 3, DelaySeconds=600)
        assert await _counts(sqs, url) == (40, 10, 3)

        # specific names return exactly those attributes
        one = await sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )
        assert one["Attributes"] == {"ApproximateNumberOfMessagesNotVisible": "10"}

        for message in received[:5]:
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        assert await _counts(sqs, url) == (40, 5, 3)
        # deleting again is a no-op
        await sqs.delete_message(QueueUrl=url, ReceiptHandle=received[0]["ReceiptHandle"])
        # but neither a deleted message's visibility nor an unknown handle can be changed
        for handle in (received[0]["ReceiptHandle"], "not-a-handle"):
            with pytest.raises(ClientError, match="ReceiptHandleIsInvalid"):
                await sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0
                )
        with pytest.raises(ClientError, match="ReceiptHandleIsInvalid"):
            await sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")

        # two in-flight messages back to visible
        for message in received[5:7]:
            await sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        assert await _counts(sqs, url) == (42, 3, 3)
        # the 43,200 s total visibility limit still applies
        with pytest.raises(ClientError, match="beyond the limit"):
            await sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=received[7]["ReceiptHandle"], VisibilityTimeout=43200
            )

        # batch delete mixes success and invalid handles
        resp = await sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": "a", "ReceiptHandle": received[7]["ReceiptHandle"]},
                {"Id": "b", "ReceiptHandle": "bogus"},
            ],
        )
        assert [e["Id"] for e in resp["Successful"]] == ["a"]
        assert [e["Id"] for e in resp["Failed"]] == ["b"]
        assert await _counts(sqs, url) == (42, 2, 3)

        # drain everything that is visible; every body arrives exactly once
        bodies: list[str] = []
        while True:
            got = await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300
            )
            batch = got.get("Messages", [])
            if not batch:
                break
            bodies += [m["Body"] for m in batch]
            resp = await sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
                ],
            )
            assert not resp.get("Failed")
        assert len(bodies) == len(set(bodies)) == 42
        assert await _counts(sqs, url) == (0, 2, 3)


async def test_old_receipt_handle_still_resolves(aws: LocalAWS) -> None:
    async with _client(aws, "sqs") as sqs:
        url = (await sqs.create_queue(QueueName="old-handles"))["QueueUrl"]
        await sqs.send_message(QueueUrl=url, MessageBody="x")
        first = (await sqs.receive_message(QueueUrl=url, VisibilityTimeout=0))["Messages"][0]
        second = (await sqs.receive_message(QueueUrl=url, VisibilityTimeout=300))["Messages"][0]
        assert first["ReceiptHandle"] != second["ReceiptHandle"]
        await sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
        assert await _counts(sqs, url) == (0, 0, 0)
        # the newer handle of the deleted message is now a no-op too
        await sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])


async def test_long_poll_wakes_on_send(aws: LocalAWS) -> None:
    async with _client(aws, "sqs") as sqs:
        url = (await sqs.create_queue(QueueName="long-poll"))["QueueUrl"]

        async def send_later() -> None:
            await asyncio.sleep(0.3)
            await sqs.send_message(QueueUrl=url, MessageBody="late")

        task = asyncio.create_task(send_later())
        got = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10)
        await task
        assert [m["Body"] for m in got["Messages"]] == ["late"]


async def test_redrive_to_dlq(aws: LocalAWS) -> None:
    async with _client(aws, "sqs") as sqs:
        dlq = (await sqs.create_queue(QueueName="redrive-dlq"))["QueueUrl"]
        dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
        url = (
            await sqs.create_queue(QueueName="redrive-src", Attributes={"RedrivePolicy": policy})
        )["QueueUrl"]
        attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
        assert json.loads(attrs["RedrivePolicy"]) == {
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": 2,
        }

        await sqs.send_message(QueueUrl=url, MessageBody="poison")
        for _ in range(2):
            got = await sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
            assert [m["Body"] for m in got["Messages"]] == ["poison"]
        got = await sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
        assert not got.get("Messages")
        assert await _counts(sqs, url) == (0, 0, 0)
        moved = await sqs.receive_message(QueueUrl=dlq, VisibilityTimeout=30)
        assert [m["Body"] for m in moved["Messages"]] == ["poison"]
        await sqs.delete_message(QueueUrl=dlq, ReceiptHandle=moved["Messages"][0]["ReceiptHandle"])
        assert await _counts(sqs, dlq) == (0, 0, 0)


async def test_fifo_queue(aws: LocalAWS) -> None:
    async with _client(aws, "sqs") as sqs:
        url = (
            await sqs.create_queue(
                QueueName="ordered.fifo",
                Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
            )
        )["QueueUrl"]
        attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
        assert attrs["FifoQueue"] == "true"
        assert attrs["ContentBasedDeduplication"] == "true"

        for body in ("a", "b", "c", "a"):  # the second "a" is deduplicated
            await sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g")
        with pytest.raises(ClientError, match="MessageGroupId"):
            await sqs.send_message(QueueUrl=url, MessageBody="no group")
        assert await _counts(sqs, url) == (3, 0, 0)

        seen: list[str] = []
        for _ in range(3):
            got = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)
            message = got["Messages"][0]
            seen.append(message["Body"])
            # the group is locked while its message is in flight
            blocked = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)
            assert not blocked.get("Messages")
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        assert seen == ["a", "b", "c"]
        assert await _counts(sqs, url) == (0, 0, 0)


# --------------------------------------------------------------------------- #
# the patch, in this process                                                   #
# --------------------------------------------------------------------------- #

Message = moto_models.Message
Queue = moto_models.Queue
SQSBackend = moto_models.SQSBackend

#: properties and methods whose call count grows with the queue depth in plain moto
SCANNING = {
    Message: ("visible", "delayed", "had_receipt_handle"),
    Queue: (
        "approximate_number_of_messages",
        "approximate_number_of_messages_not_visible",
        "approximate_number_of_messages_delayed",
    ),
}


@pytest.fixture
def scan_counter(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every call of moto's per-message / per-queue scanning code."""
    calls: Counter[str] = Counter()

    def counting_property(name: str, prop: property) -> property:
        def fget(self: Any) -> Any:
            calls[name] += 1
            return prop.fget(self)  # type: ignore[misc]

        return property(fget)

    def counting_method(name: str, func: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return func(*args, **kwargs)

        return wrapper

    for cls, names in SCANNING.items():
        for name in names:
            attr = cls.__dict__[name]
            wrapped = (
                counting_property(name, attr)
                if isinstance(attr, property)
                else counting_method(name, attr)
            )
            monkeypatch.setattr(cls, name, wrapped)
    return calls


@pytest.fixture
def patched() -> Any:
    was_applied = _sqs_patch.is_applied()
    _sqs_patch.apply()
    assert _sqs_patch.is_applied()
    yield
    if not was_applied:
        _sqs_patch.revert()


@pytest.fixture
def unpatched() -> Any:
    was_applied = _sqs_patch.is_applied()
    _sqs_patch.revert()
    assert not _sqs_patch.is_applied()
    yield
    if was_applied:
        _sqs_patch.apply()


def _scans_per_operation(calls: Counter[str], depth: int) -> dict[str, int]:
    """Scanning calls made by each SQS operation on a queue holding ``depth`` messages."""
    backend = SQSBackend("us-east-1", "123456789012")
    name = f"depth-{depth}"
    queue = backend.create_queue(name)
    for i in range(depth):  # fill without going through the (slow, unpatched) send path
        message = Message(f"id-{i}", "filler")
        message.mark_sent()
        queue._messages.append(message)

    def scans(operation: Any) -> int:
        before = sum(calls.values())
        operation()
        return sum(calls.values()) - before

    result = {"send": scans(lambda: backend.send_message(name, "new"))}
    received: list[Any] = []
    result["receive"] = scans(lambda: received.extend(backend.receive_message(name, 10, 0, 300)))
    assert len(received) == 10
    handles = [m.receipt_handle for m in received]
    # put the first received message at the back, where a linear search finds it last
    queue._messages.append(queue._messages.pop(0))
    result["change_visibility"] = scans(
        lambda: backend.change_message_visibility(name, handles[0], 600)
    )
    result["delete"] = scans(lambda: backend.delete_message(name, handles[1]))
    result["delete_batch"] = scans(
        lambda: backend.delete_message_batch(
            name, [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles[2:])]
        )
    )
    assert len(queue._messages) == depth + 1 - 9
    return result


SHALLOW, DEEP = 200, 2000


@pytest.mark.usefixtures("patched")
def test_patch_keeps_cost_flat_with_depth(scan_counter: Counter[str]) -> None:
    shallow = _scans_per_operation(scan_counter, SHALLOW)
    deep = _scans_per_operation(scan_counter, DEEP)
    for operation, count in deep.items():
        assert count <= shallow[operation] + 5, (operation, shallow, deep)
        assert count < 100, (operation, deep)
    assert deep["send"] == deep["delete"] == deep["delete_batch"] == 0


@pytest.mark.usefixtures("unpatched")
def test_unpatched_moto_still_scans(scan_counter: Counter[str]) -> None:
    """Fails once moto fixes this upstream: then the patch can be dropped."""
    deep = _scans_per_operation(scan_counter, DEEP)
    for operation in ("send", "receive", "change_visibility", "delete"):
        assert deep[operation] >= DEEP, (operation, deep)


def test_apply_is_idempotent_and_revertible() -> None:
    was_applied = _sqs_patch.is_applied()
    original = Queue.__dict__["delete_message"] if not was_applied else None
    try:
        _sqs_patch.apply()
        patched_delete = Queue.__dict__["delete_message"]
        _sqs_patch.apply()
        assert Queue.__dict__["delete_message"] is patched_delete
        assert _sqs_patch.is_applied()
        _sqs_patch.revert()
        assert not _sqs_patch.is_applied()
        if original is not None:
            assert Queue.__dict__["delete_message"] is original
    finally:
        if was_applied:
            _sqs_patch.apply()


@pytest.mark.usefixtures("unpatched")
def test_apply_refuses_other_moto_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    import moto

    monkeypatch.setattr(moto, "__version__", "5.3.0")
    with pytest.raises(RuntimeError, match=r"moto 5\.3\.0 is outside the supported range"):
        _sqs_patch.apply()
    assert not _sqs_patch.is_applied()


@pytest.mark.usefixtures("unpatched")
def test_apply_refuses_changed_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def delete_message(self: Any, receipt_handle: str, force: bool = False) -> None:
        raise AssertionError

    monkeypatch.setattr(Queue, "delete_message", delete_message)
    monkeypatch.setattr(Queue, "BASE_ATTRIBUTES", ["QueueArn"])
    with pytest.raises(RuntimeError) as info:
        _sqs_patch.apply()
    message = str(info.value)
    assert "Queue.delete_message signature changed" in message
    assert "BASE_ATTRIBUTES" in message
    assert not _sqs_patch.is_applied()


@pytest.mark.usefixtures("patched")
def test_lazy_attributes_match_moto(scan_counter: Counter[str]) -> None:
    backend = SQSBackend("us-east-1", "123456789012")
    original = _sqs_patch._originals[(Queue, "attributes")].fget
    plain = backend.create_queue("plain")
    fifo = backend.create_queue(
        "lazy.fifo", FifoQueue="true", KmsMasterKeyId="alias/k", ContentBasedDeduplication="true"
    )
    for queue in (plain, fifo):
        for i in range(5):
            message = Message(f"m{i}", "x")
            message.mark_sent(delay_seconds=60 if i == 0 else None)
            if i == 1:
                message.change_visibility(60)
            queue._messages.append(message)

        expected = original(queue)
        before = sum(scan_counter.values())
        attrs = queue.attributes
        # membership and non-counter values do not scan
        assert "ApproximateNumberOfMessages" in attrs
        assert len(attrs) == len(expected)
        assert list(attrs) == list(expected)
        assert attrs.get("ContentBasedDeduplication") == expected.get("ContentBasedDeduplication")
        assert attrs["VisibilityTimeout"] == 30
        assert sum(scan_counter.values()) == before

        assert attrs["ApproximateNumberOfMessagesDelayed"] == 1
        assert queue.attributes == expected
        assert expected == queue.attributes
        assert dict(queue.attributes) == expected
        assert {**queue.attributes} == expected
        assert dict(queue.attributes.items()) == expected
        assert list(queue.attributes.values()) == list(expected.values())
        assert queue.attributes.copy() == expected
        assert json.loads(json.dumps(queue.attributes)) == json.loads(json.dumps(expected))
        assert repr(queue.attributes) == repr(expected)
        assert (
            expected["ApproximateNumberOfMessages"],
            expected["ApproximateNumberOfMessagesNotVisible"],
        ) == (3, 1)
        # messages view: lazy, but bool() and len() are right
        assert bool(queue.messages)
        assert len(queue.messages) == 3
    empty = backend.create_queue("empty")
    assert not empty.messages
    assert len(empty.messages) == 0
