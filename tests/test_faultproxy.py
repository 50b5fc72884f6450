"""Tests of the fault-injecting proxy (tests/faultproxy.py) against a real moto server."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiobotocore.session
import pytest
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from faultproxy import (
    FaultProxy,
    Forward,
    ProxyRequest,
    ProxyResponse,
    delay,
    drop_response,
    duplicate,
    error,
    fail_sqs_batch_entries,
    match_any,
    match_s3,
    match_service,
    match_target,
    passthrough,
    reset,
    respond,
    rewrite_json,
    throttle,
    unprocessed_dynamodb_items,
    unprocessed_dynamodb_keys,
)

# --------------------------------------------------------------------------
# moto server + proxy fixtures
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not _moto_answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def module_proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=moto_url) as proxy:
        yield proxy


@pytest.fixture
def proxy(module_proxy: FaultProxy) -> Iterator[FaultProxy]:
    module_proxy.clear(log=True)
    yield module_proxy
    errors = module_proxy.errors
    module_proxy.clear(log=True)
    assert not errors, errors


def _client(proxy: FaultProxy, service: str, *, attempts: int = 1, pool: int = 10) -> Any:
    # Note: botocore's retries={"max_attempts": N} counts *retries*;
    # total_max_attempts counts attempts, so 1 means "no retry".
    create_client: Any = aiobotocore.session.get_session().create_client
    return create_client(
        service,
        region_name="us-east-1",
        endpoint_url=proxy.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=AioConfig(
            retries={"mode": "standard", "total_max_attempts": attempts},
            s3={"addressing_style": "path"},
            max_pool_connections=pool,
        ),
    )


@pytest.fixture
async def ddb(proxy: FaultProxy) -> AsyncIterator[Any]:
    async with _client(proxy, "dynamodb") as client:
        yield client


@pytest.fixture
async def sqs(proxy: FaultProxy) -> AsyncIterator[Any]:
    async with _client(proxy, "sqs") as client:
        yield client


@pytest.fixture
async def s3(proxy: FaultProxy) -> AsyncIterator[Any]:
    async with _client(proxy, "s3") as client:
        yield client


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _table(ddb: Any) -> str:
    name = _name("tbl")
    await ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


async def _queue(sqs: Any) -> str:
    return str((await sqs.create_queue(QueueName=_name("q")))["QueueUrl"])


async def _bucket(s3: Any) -> str:
    name = _name("bkt")
    await s3.create_bucket(Bucket=name)
    return name


async def _has_item(ddb: Any, table: str, pk: str) -> bool:
    resp = await ddb.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True)
    return "Item" in resp


async def _drain(sqs: Any, url: str) -> list[str]:
    bodies: list[str] = []
    while True:
        resp = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60, WaitTimeSeconds=0
        )
        if not resp.get("Messages"):
            return sorted(bodies)
        bodies += [m["Body"] for m in resp["Messages"]]


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# --------------------------------------------------------------------------
# passthrough
# --------------------------------------------------------------------------


async def test_passthrough_dynamodb_and_sqs(proxy: FaultProxy, ddb: Any, sqs: Any) -> None:
    table = await _table(ddb)
    await ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "v": {"B": b"\x00\xff"}})
    item = (await ddb.get_item(TableName=table, Key={"pk": {"S": "a"}}))["Item"]
    assert item["v"]["B"] == b"\x00\xff"

    url = await _queue(sqs)
    assert url.startswith(proxy.url)  # Host is forwarded as sent
    await sqs.send_message(QueueUrl=url, MessageBody="hello")
    assert await _drain(sqs, url) == ["hello"]

    assert ("DynamoDB_20120810.PutItem", 200) in proxy.requests
    assert proxy.count("PutItem") == 1
    assert proxy.count("DynamoDB_20120810.GetItem") == 1
    assert proxy.count("SendMessage") == 1
    assert proxy.count("SendMessageBatch") == 0


async def test_passthrough_s3_large_object(proxy: FaultProxy, s3: Any) -> None:
    seen_headers: list[dict[str, str]] = []

    def spy(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        seen_headers.append({k.lower(): v for k, v in request.headers})
        return forward(request)

    proxy.add_rule(match_s3("PUT", r"^/bkt-[0-9a-f]+/big$"), spy)
    bucket = await _bucket(s3)
    data = os.urandom(2 * 1024 * 1024)
    await s3.put_object(Bucket=bucket, Key="big", Body=data)
    got = await s3.get_object(Bucket=bucket, Key="big")
    async with got["Body"] as body:
        assert await body.read() == data
    head = await s3.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == len(data)
    with pytest.raises(ClientError) as exc:
        await s3.head_object(Bucket=bucket, Key="missing")
    assert _error_code(exc) == "404"

    assert len(seen_headers) == 1
    assert seen_headers[0].get("expect") == "100-continue"
    assert proxy.count("S3 PUT") == 2  # bucket + object
    assert proxy.count(f"S3 PUT /{bucket}/big", status=200) == 1
    assert proxy.count(f"S3 HEAD /{bucket}/") == 2
    assert (f"S3 GET /{bucket}/big", 200) in proxy.requests


def _raw_exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _auth(service: str) -> str:
    # moto routes by the SigV4 credential scope and does not check signatures
    return (
        f"AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/{service}/aws4_request, "
        "SignedHeaders=host, Signature=0"
    )


def test_http_framing_keepalive_close_expect_chunked(proxy: FaultProxy) -> None:
    list_tables = {
        "X-Amz-Target": "DynamoDB_20120810.ListTables",
        "Content-Type": "application/x-amz-json-1.0",
        "Authorization": _auth("dynamodb"),
    }
    # keep-alive: several requests on one client connection (moto itself
    # closes after every response; the proxy reconnects upstream)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    sock = None
    for _ in range(3):
        conn.request("POST", "/", body=b"{}", headers=list_tables)
        resp = conn.getresponse()
        assert resp.status == 200
        assert b"TableNames" in resp.read()
        assert not resp.will_close
        assert sock is None or conn.sock is sock
        sock = conn.sock
    # Connection: close from the client is honoured
    conn.request("POST", "/", body=b"{}", headers={**list_tables, "Connection": "close"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Connection") == "close"
    resp.read()
    conn.close()

    # chunked request body, binary
    bucket = _name("bkt")
    payload = bytes(range(256)) * 1000
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    s3_auth = {"Authorization": _auth("s3")}
    conn.request("PUT", f"/{bucket}", headers=s3_auth)
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    conn.request(
        "PUT", f"/{bucket}/chunked", body=iter([payload[:1000], payload[1000:]]), headers=s3_auth
    )
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    conn.request("GET", f"/{bucket}/chunked", headers=s3_auth)
    resp = conn.getresponse()
    assert resp.read() == payload
    conn.close()

    # Expect: 100-continue, sent by hand: the body only after "100 Continue"
    body = b"x" * 5000
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(
            f"PUT /{bucket}/expect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {_auth('s3')}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        interim = s.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100")
        s.sendall(body)
        s.sendall(
            f"HEAD /{bucket}/expect HTTP/1.1\r\nHost: x\r\nAuthorization: {_auth('s3')}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    put_head, _, rest = data.partition(b"\r\n\r\n")
    assert put_head.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 5000" in rest  # HEAD keeps the length, sends no body
    assert rest.endswith(b"\r\n\r\n")
    assert proxy.count(f"S3 PUT /{bucket}/expect", status=200) == 1


class _ChunkedUpstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    payload = bytes(range(256)) * 64

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(self.payload), 1000):
            part = self.payload[i : i + 1000]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_chunked_upstream_response() -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedUpstream)
    thread = threading.Thread(
        target=upstream.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        with FaultProxy(f"http://127.0.0.1:{upstream.server_port}") as proxy:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            for _ in range(2):
                conn.request("GET", "/bucket/key")
                resp = conn.getresponse()
                assert resp.getheader("Transfer-Encoding") is None
                assert resp.getheader("Content-Length") == str(len(_ChunkedUpstream.payload))
                assert resp.read() == _ChunkedUpstream.payload
            conn.close()
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join()


# --------------------------------------------------------------------------
# throttle / error
# --------------------------------------------------------------------------


async def test_throttle_error_codes(proxy: FaultProxy, ddb: Any, sqs: Any, s3: Any) -> None:
    table = await _table(ddb)
    url = await _queue(sqs)
    bucket = await _bucket(s3)
    proxy.add_rule(match_any(), throttle())

    with pytest.raises(ClientError) as exc:
        await ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
    assert _error_code(exc) == "ThrottlingException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    with pytest.raises(sqs.exceptions.RequestThrottled) as sqs_exc:
        await sqs.send_message(QueueUrl=url, MessageBody="x")
    assert sqs_exc.value.response["Error"]["Code"] == "RequestThrottled"
    assert sqs_exc.value.response["Error"]["Type"] == "Sender"

    with pytest.raises(ClientError) as exc:
        await s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert _error_code(exc) == "SlowDown"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as exc:
        await s3.head_object(Bucket=bucket, Key="k")
    assert _error_code(exc) == "503"  # HEAD: no body, botocore uses the status

    with pytest.raises(ClientError) as exc:
        await ddb.get_item(TableName=table, Key={"pk": {"S": "a"}})
    assert _error_code(exc) == "ThrottlingException"
    proxy.clear()
    proxy.add_rule(match_service("dynamodb"), throttle("ProvisionedThroughputExceededException"))
    with pytest.raises(ddb.exceptions.ProvisionedThroughputExceededException):
        await ddb.get_item(TableName=table, Key={"pk": {"S": "a"}})

    assert proxy.count("PutItem", status=400) == 1
    assert proxy.count("SendMessage", status=400) == 1
    assert proxy.count("S3 PUT", status=503) == 1
    assert not await _has_item_unthrottled(proxy, ddb, table, "a")


async def _has_item_unthrottled(proxy: FaultProxy, ddb: Any, table: str, pk: str) -> bool:
    proxy.clear()
    return await _has_item(ddb, table, pk)


async def test_throttle_is_retried_by_standard_mode(proxy: FaultProxy) -> None:
    async with (
        _client(proxy, "dynamodb", attempts=3) as ddb,
        _client(proxy, "sqs", attempts=3) as sqs,
        _client(proxy, "s3", attempts=3) as s3,
    ):
        table = await _table(ddb)
        url = await _queue(sqs)
        bucket = await _bucket(s3)
        rules = [
            proxy.add_rule(match_target("PutItem"), throttle(), times=1),
            proxy.add_rule(match_target("SendMessage"), throttle(), times=1),
            proxy.add_rule(match_s3("PUT", r"/k$"), throttle(), times=1),
        ]
        results = await asyncio.gather(
            ddb.put_item(TableName=table, Item={"pk": {"S": "a"}}),
            sqs.send_message(QueueUrl=url, MessageBody="m"),
            s3.put_object(Bucket=bucket, Key="k", Body=b"data"),
        )
        assert [r["ResponseMetadata"]["RetryAttempts"] for r in results] == [1, 1, 1]
        assert [rule.hits for rule in rules] == [1, 1, 1]
        assert proxy.count("PutItem") == 2
        assert proxy.count("SendMessage") == 2
        assert proxy.count(f"S3 PUT /{bucket}/k") == 2
        assert await _has_item(ddb, table, "a")
        assert await _drain(sqs, url) == ["m"]


async def test_error_action(proxy: FaultProxy, ddb: Any, sqs: Any, s3: Any) -> None:
    table = await _table(ddb)
    url = await _queue(sqs)
    bucket = await _bucket(s3)
    proxy.add_rule(match_service("dynamodb"), error(500, "InternalServerError", "boom"))
    proxy.add_rule(match_service("sqs"), error(400, "QueueDoesNotExist", "gone"))
    proxy.add_rule(match_s3("GET"), error(404, "NoSuchKey", "nope"))

    with pytest.raises(ClientError) as exc:
        await ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
    assert exc.value.response["Error"] == {"Code": "InternalServerError", "Message": "boom"}
    with pytest.raises(sqs.exceptions.QueueDoesNotExist) as sqs_exc:
        await sqs.send_message(QueueUrl=url, MessageBody="x")
    assert sqs_exc.value.response["Error"]["Message"] == "gone"
    with pytest.raises(s3.exceptions.NoSuchKey) as s3_exc:
        await s3.get_object(Bucket=bucket, Key="k")
    assert s3_exc.value.response["Error"]["Message"] == "nope"
    assert proxy.count("PutItem", status=500) == 1


# --------------------------------------------------------------------------
# reset / drop_response / delay
# --------------------------------------------------------------------------


async def test_reset_does_not_apply(proxy: FaultProxy, ddb: Any, sqs: Any) -> None:
    table = await _table(ddb)
    url = await _queue(sqs)
    proxy.add_rule(match_target("PutItem"), reset(), times=1)
    proxy.add_rule(match_target("SendMessage"), reset(graceful=True), times=1)
    with pytest.raises(EndpointConnectionError):  # RST
        await ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
    with pytest.raises(ConnectionClosedError):  # FIN
        await sqs.send_message(QueueUrl=url, MessageBody="x")
    assert ("DynamoDB_20120810.PutItem", 0) in proxy.requests
    assert not await _has_item(ddb, table, "a")
    assert await _drain(sqs, url) == []


@pytest.mark.parametrize("graceful", [False, True])
async def test_drop_response_applies_the_write(
    proxy: FaultProxy, ddb: Any, sqs: Any, graceful: bool
) -> None:
    table = await _table(ddb)
    url = await _queue(sqs)
    proxy.add_rule(match_target("PutItem", "SendMessage"), drop_response(graceful=graceful))
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        await ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        await sqs.send_message(QueueUrl=url, MessageBody="lost-ack")
    assert proxy.count("PutItem", status=0) == 1
    assert await _has_item(ddb, table, "a")
    assert await _drain(sqs, url) == ["lost-ack"]


async def test_delay(proxy: FaultProxy, ddb: Any) -> None:
    table = await _table(ddb)
    proxy.add_rule(match_target("PutItem"), delay(0.05), times=1)
    proxy.add_rule(match_target("PutItem"), delay(0.05, then=throttle()), times=1)
    await ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
    with pytest.raises(ClientError) as exc:
        await ddb.put_item(TableName=table, Item={"pk": {"S": "b"}})
    assert _error_code(exc) == "ThrottlingException"
    assert await _has_item(ddb, table, "a")
    assert not await _has_item(ddb, table, "b")


# --------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------


async def test_times_order_and_clear(proxy: FaultProxy, ddb: Any) -> None:
    table = await _table(ddb)
    first = proxy.add_rule(match_target("DynamoDB_20120810.PutItem"), throttle(), times=2)
    second = proxy.add_rule("PutItem", error(500, "InternalServerError", "second"), times=1)
    shadowed = proxy.add_rule(match_target("GetItem"), passthrough())
    never = proxy.add_rule(match_target("GetItem"), reset())
    codes = []
    for i in range(4):
        try:
            await ddb.put_item(TableName=table, Item={"pk": {"S": str(i)}})
            codes.append("ok")
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
    assert codes == ["ThrottlingException", "ThrottlingException", "InternalServerError", "ok"]
    assert (first.hits, second.hits) == (2, 1)
    assert first.exhausted
    assert second.exhausted
    assert await _has_item(ddb, table, "3")
    assert not await _has_item(ddb, table, "0")
    assert (shadowed.hits, never.hits) == (2, 0)

    proxy.remove_rule(shadowed)
    with pytest.raises(EndpointConnectionError):
        await _has_item(ddb, table, "3")
    proxy.clear()
    assert proxy.rules == []
    assert await _has_item(ddb, table, "3")
    assert proxy.count("PutItem") == 4
    assert proxy.count("GetItem") == 4


async def test_action_exception_gives_500(proxy: FaultProxy, ddb: Any) -> None:
    def broken(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        raise RuntimeError("bug in test handler")

    proxy.add_rule(match_target("ListTables"), broken, times=1)
    with pytest.raises(ClientError) as exc:
        await ddb.list_tables()
    assert _error_code(exc) == "FaultProxyActionError"
    assert "bug in test handler" in exc.value.response["Error"]["Message"]
    assert [type(e) for e in proxy.errors] == [RuntimeError]
    proxy.clear_log()


# --------------------------------------------------------------------------
# JSON rewrites
# --------------------------------------------------------------------------


async def test_fail_sqs_batch_entries(proxy: FaultProxy, sqs: Any) -> None:
    url = await _queue(sqs)
    entries = [{"Id": f"m{i}", "MessageBody": f"body-{i}"} for i in range(6)]

    rule = proxy.add_rule("SendMessageBatch", fail_sqs_batch_entries({"m1", "m4"}), times=1)
    resp = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert rule.hits == 1
    assert sorted(s["Id"] for s in resp["Successful"]) == ["m0", "m2", "m3", "m5"]
    assert resp["Failed"] == [
        {
            "Id": i,
            "SenderFault": False,
            "Code": "InternalError",
            "Message": "Injected failure (InternalError)",
        }
        for i in ("m1", "m4")
    ]
    assert await _drain(sqs, url) == ["body-0", "body-2", "body-3", "body-5"]

    # by body content, and by index; a sender fault with a custom code
    proxy.add_rule(
        "SendMessageBatch",
        fail_sqs_batch_entries(
            lambda entry, index: entry["MessageBody"] == "body-2" or index == 5,
            code="InvalidParameterValue",
            sender_fault=True,
            message="bad",
        ),
        times=1,
    )
    resp = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert [(f["Id"], f["SenderFault"], f["Code"]) for f in resp["Failed"]] == [
        ("m2", True, "InvalidParameterValue"),
        ("m5", True, "InvalidParameterValue"),
    ]
    assert len(resp["Successful"]) == 4
    await _drain(sqs, url)

    # all entries fail: nothing reaches moto
    proxy.add_rule("SendMessageBatch", fail_sqs_batch_entries(len(entries)), times=1)
    resp = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert resp["Successful"] == []
    assert [f["Id"] for f in resp["Failed"]] == [e["Id"] for e in entries]
    assert await _drain(sqs, url) == []

    # DeleteMessageBatch: the failed entry's message is not deleted
    url = await _queue(sqs)
    await sqs.send_message_batch(QueueUrl=url, Entries=entries[:3])
    received = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10))["Messages"]
    assert len(received) == 3
    proxy.add_rule("DeleteMessageBatch", fail_sqs_batch_entries("d0"), times=1)
    resp = await sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)
        ],
    )
    assert [f["Id"] for f in resp["Failed"]] == ["d0"]
    assert sorted(s["Id"] for s in resp["Successful"]) == ["d1", "d2"]
    attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    total = int(attrs["Attributes"]["ApproximateNumberOfMessages"]) + int(
        attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
    )
    assert total == 1

    # a rule on other operations passes them through
    proxy.add_rule(match_service("sqs"), fail_sqs_batch_entries(1))
    await sqs.send_message(QueueUrl=url, MessageBody="single")
    assert proxy.count("SendMessage", status=200) == 1


def _put(pk: str) -> dict[str, Any]:
    return {"PutRequest": {"Item": {"pk": {"S": pk}}}}


async def test_unprocessed_dynamodb_items(proxy: FaultProxy, ddb: Any) -> None:
    t1, t2 = await _table(ddb), await _table(ddb)
    request_items = {t1: [_put(f"a{i}") for i in range(5)], t2: [_put(f"b{i}") for i in range(3)]}

    proxy.add_rule("BatchWriteItem", unprocessed_dynamodb_items(3), times=1)
    resp = await ddb.batch_write_item(RequestItems=request_items)
    assert resp["UnprocessedItems"] == {t1: request_items[t1][:3]}
    for i in range(5):
        assert await _has_item(ddb, t1, f"a{i}") == (i >= 3)
    assert await _has_item(ddb, t2, "b0")

    # predicate over tables; the client resubmits what was unprocessed
    proxy.add_rule(
        "BatchWriteItem",
        unprocessed_dynamodb_items(lambda table, write, index: table == t2 or index == 0),
        times=1,
    )
    resp = await ddb.batch_write_item(RequestItems=request_items)
    unprocessed = resp["UnprocessedItems"]
    assert unprocessed == {t1: request_items[t1][:1], t2: request_items[t2]}

    # all unprocessed: moto is not called
    before = len(proxy.requests)
    proxy.add_rule("BatchWriteItem", unprocessed_dynamodb_items(lambda *_: True), times=1)
    fresh = {t1: [_put("new")]}
    resp = await ddb.batch_write_item(RequestItems=fresh)
    assert resp["UnprocessedItems"] == fresh
    assert not await _has_item(ddb, t1, "new")
    assert len(proxy.requests) == before + 2

    resp = await ddb.batch_write_item(RequestItems=unprocessed)
    assert resp["UnprocessedItems"] == {}
    assert await _has_item(ddb, t1, "a0")


async def test_unprocessed_dynamodb_keys(proxy: FaultProxy, ddb: Any) -> None:
    table = await _table(ddb)
    await ddb.batch_write_item(RequestItems={table: [_put(f"k{i}") for i in range(5)]})
    keys = [{"pk": {"S": f"k{i}"}} for i in range(5)]
    proxy.add_rule(
        "BatchGetItem",
        unprocessed_dynamodb_keys(lambda table, key, index: key["pk"]["S"] in ("k1", "k3")),
        times=1,
    )
    resp = await ddb.batch_get_item(RequestItems={table: {"Keys": keys, "ConsistentRead": True}})
    assert sorted(i["pk"]["S"] for i in resp["Responses"][table]) == ["k0", "k2", "k4"]
    assert resp["UnprocessedKeys"] == {table: {"Keys": [keys[1], keys[3]], "ConsistentRead": True}}


async def test_rewrite_json_and_custom_handlers(proxy: FaultProxy, ddb: Any, sqs: Any) -> None:
    tables = [await _table(ddb) for _ in range(3)]

    def limit_one(body: Any, exchange: Any) -> Any:
        body["Limit"] = 1

    def add_marker(body: Any, exchange: Any) -> Any:
        assert exchange.forwarded["Limit"] == 1
        return {**body, "TableNames": [*body["TableNames"], "injected"]}

    proxy.add_rule("ListTables", rewrite_json(limit_one, add_marker), times=1)
    resp = await ddb.list_tables()  # the CRC32 of the rewritten body is recomputed
    assert len(resp["TableNames"]) == 2
    assert resp["TableNames"][-1] == "injected"
    assert "LastEvaluatedTableName" in resp

    # a hand-written handler: change the request, then inspect the response
    def rename(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        body = request.json()
        body["Item"]["pk"]["S"] = "renamed"
        response = forward(request.with_json(body))
        assert response.status == 200
        return response

    proxy.add_rule("PutItem", rename, times=1)
    await ddb.put_item(TableName=tables[0], Item={"pk": {"S": "orig"}})
    assert await _has_item(ddb, tables[0], "renamed")
    assert not await _has_item(ddb, tables[0], "orig")

    # a canned response, never forwarded
    proxy.add_rule("ListTables", respond(json_body={"TableNames": ["fake"]}), times=1)
    assert (await ddb.list_tables())["TableNames"] == ["fake"]

    # duplicate delivery: applied twice, client sees one response
    url = await _queue(sqs)
    proxy.add_rule("SendMessage", duplicate(), times=1)
    await sqs.send_message(QueueUrl=url, MessageBody="dup")
    assert await _drain(sqs, url) == ["dup", "dup"]


# --------------------------------------------------------------------------
# concurrency and shutdown
# --------------------------------------------------------------------------


async def test_fifty_concurrent_requests(proxy: FaultProxy) -> None:
    async with _client(proxy, "dynamodb", pool=50) as ddb, _client(proxy, "sqs", pool=50) as sqs:
        table = await _table(ddb)
        url = await _queue(sqs)
        proxy.add_rule("PutItem", delay(0.05), times=25)
        puts = [ddb.put_item(TableName=table, Item={"pk": {"S": f"p{i}"}}) for i in range(40)]
        sends = [sqs.send_message(QueueUrl=url, MessageBody=f"s{i}") for i in range(10)]
        await asyncio.gather(*puts, *sends)
        assert proxy.count("PutItem", status=200) == 40
        assert proxy.count("SendMessage", status=200) == 10
        scan = await ddb.scan(TableName=table, Select="COUNT")
        assert scan["Count"] == 40
        assert len(await _drain(sqs, url)) == 10


def _roundtrip(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/moto-api/")
    return conn.getresponse().status


def _proxy_threads(port: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"faultproxy-{port}-")]


def test_stop_closes_connections_and_joins_threads(moto_url: str) -> None:
    proxy = FaultProxy(moto_url).start()
    port = proxy.port
    assert len(_proxy_threads(port)) == 1
    idle = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    idle.request("GET", "/moto-api/")
    idle.getresponse().read()  # the connection stays open (keep-alive)
    rule = proxy.add_rule(match_any(), delay(60))
    outcome: list[BaseException | int] = []

    def stuck_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            conn.request("GET", "/moto-api/")
            outcome.append(conn.getresponse().status)
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)
        finally:
            conn.close()

    client = threading.Thread(target=stuck_request)
    client.start()
    deadline = time.monotonic() + 10
    while rule.hits == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proxy.stop()  # does not wait for the 60 s delay
    client.join(10)
    assert not client.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError | http.client.HTTPException)
    assert _proxy_threads(port) == []
    with pytest.raises((OSError, http.client.HTTPException)):
        _roundtrip(idle)
    idle.close()
    proxy.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = proxy.url

    with FaultProxy(moto_url) as again:
        conn = http.client.HTTPConnection("127.0.0.1", again.port, timeout=10)
        conn.request("GET", "/moto-api/")
        assert conn.getresponse().status == 200
        conn.close()
        port = again.port
    assert _proxy_threads(port) == []
