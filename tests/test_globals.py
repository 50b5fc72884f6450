"""Cluster globals in S3: create/resume, revalidated cache, compare-and-swap updates."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import pytest
from aiobotocore.session import AioSession
from conftest import client_for
from faultproxy import (
    FaultProxy,
    Forward,
    ProxyRequest,
    ProxyResponse,
    drop_response,
    error,
    match_s3,
)

import msgcluster
from msgcluster.clusters._globals import create_globals, get_globals, globals_key, update_globals
from msgcluster.local import LocalAWS


class Settings(msgspec.Struct):
    model: str
    temperature: float
    tags: list[str] = []


class Counter(msgspec.Struct):
    n: int


def new_cluster_id() -> str:
    return str(uuid.uuid4())


async def stored(mc: msgcluster.Client, pointer: msgcluster.S3Pointer) -> bytes:
    response = await mc.s3.get_object(Bucket=pointer.bucket, Key=pointer.key)
    async with response["Body"] as stream:
        data: bytes = await stream.read()
    return data


async def increment(current: Counter) -> Counter:
    await anyio.sleep(0.01)  # let the other updates read the same version
    return Counter(current.n + 1)


async def test_create_then_get_round_trip(mc: msgcluster.Client, names: dict[str, str]) -> None:
    cluster_id = new_cluster_id()
    value = Settings("m-1", 0.5, ["a", "b"])
    pointer = await create_globals(mc.ctx, cluster_id, value)

    assert pointer.bucket == names["bucket"]
    assert pointer.key == globals_key(cluster_id) == f"SQSMessage${cluster_id}-globals.json"
    data = await stored(mc, pointer)
    assert pointer.size == len(data)
    head = await mc.s3.head_object(Bucket=pointer.bucket, Key=pointer.key)
    assert head["ContentType"] == "application/json"

    assert await get_globals(mc.ctx, pointer, Settings) == value
    assert await get_globals(mc.ctx, pointer) == {
        "model": "m-1",
        "temperature": 0.5,
        "tags": ["a", "b"],
    }
    assert await get_globals(mc.ctx, pointer, dict[str, Any]) == msgspec.json.decode(data)


async def test_create_again_keeps_the_existing_globals(mc: msgcluster.Client) -> None:
    # A crashed creation resumed with the same cluster id: the first value
    # (and any update since) survives.
    cluster_id = new_cluster_id()
    first = await create_globals(mc.ctx, cluster_id, Counter(1))
    await update_globals(mc.ctx, first, Counter(5))
    again = await create_globals(mc.ctx, cluster_id, Counter(99))
    assert again.key == first.key
    assert again.size == len(b'{"n":5}')
    assert await get_globals(mc.ctx, again, Counter) == Counter(5)

    # Also from a process with an empty cache, and for concurrent creations.
    other_id = new_cluster_id()
    pointers: list[msgcluster.S3Pointer] = []

    async def create(index: int) -> None:
        pointers.append(await create_globals(mc.ctx, other_id, Counter(index)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(create, 0)
        tg.start_soon(create, 1)
    assert pointers[0] == pointers[1]
    assert await get_globals(mc.ctx, pointers[0], Counter) in (Counter(0), Counter(1))


async def test_concurrent_updates_lose_nothing(mc: msgcluster.Client) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), Counter(0))
    results: list[Counter] = []

    async def one() -> None:
        results.append(await update_globals(mc.ctx, pointer, increment, Counter))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert await get_globals(mc.ctx, pointer, Counter) == Counter(20)
    # Each update returned the value it wrote: all distinct.
    assert sorted(r.n for r in results) == list(range(1, 21))


async def test_concurrent_updates_from_separate_clients(
    mc: msgcluster.Client, local_aws: LocalAWS, names: dict[str, str]
) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), Counter(0))
    # One botocore session only shares the loaded service models (opening is
    # 8x faster); each Client has its own Context, globals cache and connections.
    session = AioSession()
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(client_for(local_aws, names, session=session))
            for _ in range(20)
        ]
        assert len({id(client.ctx.globals_cache) for client in clients}) == 20
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(update_globals, client.ctx, pointer, increment, Counter)
    assert await get_globals(mc.ctx, pointer, Counter) == Counter(20)


async def test_plain_value_and_sync_function_updates(mc: msgcluster.Client) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), {"n": 1})
    assert await update_globals(mc.ctx, pointer, {"n": 7, "extra": True}) == {"n": 7, "extra": True}
    assert await get_globals(mc.ctx, pointer) == {"n": 7, "extra": True}
    # A plain function (not async) gets the current value decoded as ``type``.
    new = await update_globals(mc.ctx, pointer, lambda c: Counter(c.n * 2), Counter)
    assert new == Counter(14)
    assert await get_globals(mc.ctx, pointer, Counter) == Counter(14)


async def test_failing_function_writes_nothing(mc: msgcluster.Client) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), Counter(3))
    before = await stored(mc, pointer)

    class Boom(Exception):
        pass

    async def fail(current: Counter) -> Counter:
        raise Boom(current.n)

    with pytest.raises(Boom) as info:
        await update_globals(mc.ctx, pointer, fail, Counter)
    assert info.value.args == (3,)
    assert await stored(mc, pointer) == before

    # A new value msgspec cannot encode is refused before anything is written.
    with pytest.raises(msgcluster.ValidationError, match="cannot be encoded as JSON"):
        await update_globals(mc.ctx, pointer, lambda c: object(), Counter)
    with pytest.raises(msgcluster.ValidationError, match="cannot be encoded as JSON"):
        await create_globals(mc.ctx, new_cluster_id(), {"when": object()})
    assert await stored(mc, pointer) == before


async def test_cached_reads_are_revalidated(
    mc: msgcluster.Client, pc: msgcluster.Client, proxy: FaultProxy
) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), Counter(1))
    sent: list[str | None] = []

    def spy(request: ProxyRequest, forward: Forward) -> ProxyResponse:
        sent.append(request.headers.get("if-none-match"))
        return forward(request)

    proxy.add_rule(match_s3("GET", rf"^/{pointer.bucket}/"), spy)

    # pc is another process's client: empty cache, so the first read is a full GET.
    assert await get_globals(pc.ctx, pointer, Counter) == Counter(1)
    cached = pc.ctx.globals_cache.get(pointer.key)
    assert cached is not None
    etag, body = cached
    assert body == b'{"n":1}'
    assert await get_globals(pc.ctx, pointer, Counter) == Counter(1)
    assert sent == [None, etag]
    assert proxy.count(f"S3 GET /{pointer.bucket}/", status=200) == 1
    assert proxy.count(f"S3 GET /{pointer.bucket}/", status=304) == 1

    # A write by another client is seen by the next read, which refreshes the cache.
    await update_globals(mc.ctx, pointer, Counter(2))
    assert await get_globals(pc.ctx, pointer, Counter) == Counter(2)
    assert sent[-1] == etag
    assert proxy.count(f"S3 GET /{pointer.bucket}/", status=200) == 2
    new_etag, new_body = pc.ctx.globals_cache.get(pointer.key) or ("", b"")
    assert (new_etag != etag, new_body) == (True, b'{"n":2}')

    # The writer cached what it wrote, under the ETag S3 gave the new version.
    assert mc.ctx.globals_cache.get(pointer.key) == (new_etag, b'{"n":2}')


async def test_conflict_error_when_every_swap_loses(
    mc: msgcluster.Client, local_aws: LocalAWS, names: dict[str, str]
) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), Counter(0))
    calls = 0
    async with client_for(local_aws, names) as other:

        async def meddle(current: Counter) -> Counter:
            nonlocal calls
            calls += 1
            # Another writer changes the object between our read and our write.
            await update_globals(other.ctx, pointer, Counter(100 + calls))
            return Counter(current.n + 1)

        with pytest.raises(msgcluster.GlobalsConflictError, match="after 3 attempts"):
            await update_globals(mc.ctx, pointer, meddle, Counter, max_attempts=3)
    assert calls == 3
    assert await get_globals(mc.ctx, pointer, Counter) == Counter(103)
    assert isinstance(msgcluster.GlobalsConflictError("x"), msgcluster.MsgclusterError)


async def test_write_conflict_409_is_retried(
    mc: msgcluster.Client, pc: msgcluster.Client, proxy: FaultProxy
) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), Counter(0))
    proxy.add_rule(match_s3("PUT"), error(409, "ConditionalRequestConflict", "busy"), times=2)
    assert await update_globals(pc.ctx, pointer, increment, Counter) == Counter(1)
    assert proxy.count("S3 PUT", status=409) == 2
    assert proxy.count("S3 PUT", status=200) == 1
    assert await get_globals(mc.ctx, pointer, Counter) == Counter(1)


async def test_lost_response_is_not_applied_twice(
    mc: msgcluster.Client, pc: msgcluster.Client, proxy: FaultProxy
) -> None:
    # The write applies but its response is lost; botocore's retry then gets
    # 412 (the ETag changed: by our own write). The update must not run again.
    pointer = await create_globals(mc.ctx, new_cluster_id(), Counter(0))
    calls = 0

    def bump(current: Counter) -> Counter:
        nonlocal calls
        calls += 1
        return Counter(current.n + 1)

    proxy.add_rule(match_s3("PUT"), drop_response(), times=1)
    assert await update_globals(pc.ctx, pointer, bump, Counter) == Counter(1)
    assert calls == 1
    assert proxy.count("S3 PUT", status=412) == 1
    assert await get_globals(mc.ctx, pointer, Counter) == Counter(1)


async def test_undecodable_and_missing_globals(mc: msgcluster.Client) -> None:
    pointer = await create_globals(mc.ctx, new_cluster_id(), {"n": "not a number"})
    with pytest.raises(msgcluster.ValidationError, match="do not match Counter") as info:
        await get_globals(mc.ctx, pointer, Counter)
    assert pointer.key in str(info.value)
    with pytest.raises(msgcluster.ValidationError, match=r"list\[int\]"):
        await get_globals(mc.ctx, pointer, list[int])
    # The update function is never called with a value of the wrong type.
    with pytest.raises(msgcluster.ValidationError, match="Counter"):
        await update_globals(mc.ctx, pointer, increment, Counter)

    await mc.s3.put_object(Bucket=pointer.bucket, Key=pointer.key, Body=b"{not json")
    with pytest.raises(msgcluster.ValidationError, match=pointer.key.replace("$", r"\$")):
        await get_globals(mc.ctx, pointer)

    # Deleted while cached: the revalidating read reports it gone and forgets it.
    await mc.s3.delete_object(Bucket=pointer.bucket, Key=pointer.key)
    assert mc.ctx.globals_cache.get(pointer.key) is not None
    with pytest.raises(msgcluster.ObjectNotFoundError, match=r"expired .* or deleted"):
        await get_globals(mc.ctx, pointer)
    assert mc.ctx.globals_cache.get(pointer.key) is None
    with pytest.raises(msgcluster.ObjectNotFoundError, match="globals"):
        await update_globals(mc.ctx, pointer, increment, Counter)

    never = msgcluster.S3Pointer(bucket=pointer.bucket, key=globals_key(new_cluster_id()))
    with pytest.raises(msgcluster.ObjectNotFoundError, match="cluster globals") as missing:
        await get_globals(mc.ctx, never)
    assert missing.value.code == "NoSuchKey"
    assert missing.value.__cause__ is not None
