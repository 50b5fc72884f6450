"""Chunking, bounded fan-out and partial-failure retries shared by every batch API."""

from __future__ import annotations

import random
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

import anyio

from ._errors import ValidationError

__all__ = [
    "Backoff",
    "as_list",
    "chunked",
    "first_error",
    "gather_limited",
    "iter_chunks",
    "pack_by_size",
]

T = TypeVar("T")
R = TypeVar("R")


def as_list(items: object, what: str) -> list[Any]:
    """``items`` (any iterable but a str, bytes or mapping) as a list, else a
    ValidationError naming ``what`` was expected."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise ValidationError(
            f"expected a list (or other iterable) of {what}, got {type(items).__name__}"
        )
    return list(items)


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def iter_chunks(items: Iterable[T] | AsyncIterable[T], size: int) -> AsyncIterator[list[T]]:
    """Stream any (async) iterable as lists of at most ``size`` (bounded memory)."""
    chunk: list[T] = []
    if isinstance(items, AsyncIterable):
        async for item in items:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    else:
        for item in items:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def pack_by_size(
    items: Sequence[T], *, max_count: int, max_bytes: int, size_of: Callable[[T], int]
) -> list[list[T]]:
    """Greedy packing that keeps each group within ``max_count`` and ``max_bytes``.

    An item larger than ``max_bytes`` gets a group of its own; callers reject
    such items before packing.
    """
    groups: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for item in items:
        size = size_of(item)
        if current and (len(current) >= max_count or current_bytes + size > max_bytes):
            groups.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        groups.append(current)
    return groups


async def gather_limited(
    limiter: anyio.CapacityLimiter, calls: Iterable[Callable[[], Awaitable[R]]]
) -> list[R]:
    """Run the calls concurrently under ``limiter``; results keep input order.

    The first exception cancels the rest and propagates (in an ExceptionGroup
    only if several failed at once; a single one is re-raised as is).
    """
    funcs = list(calls)
    results: list[Any] = [None] * len(funcs)
    if len(funcs) == 1:
        async with limiter:
            results[0] = await funcs[0]()
        return results

    async def run(index: int, func: Callable[[], Awaitable[R]]) -> None:
        async with limiter:
            results[index] = await func()

    try:
        async with anyio.create_task_group() as tg:
            for index, func in enumerate(funcs):
                tg.start_soon(run, index, func)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return results


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-member groups (else the group)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Backoff:
    """Full-jitter exponential backoff for partial failures botocore cannot retry.

    botocore retries whole requests; entries an AWS batch API reports as failed
    (``UnprocessedItems``, ``Failed``) come back in a 200 response and are ours
    to retry.
    """

    def __init__(self, *, attempts: int = 8, base: float = 0.05, cap: float = 5.0) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap

    async def sleep(self, attempt: int) -> None:
        """Wait before attempt ``attempt + 1``; no wait after the last attempt (the
        caller gives up at once instead of sleeping for nothing, up to ``cap``)."""
        if attempt >= self.attempts - 1:
            return
        await anyio.sleep(random.uniform(0, min(self.cap, self.base * 2**attempt)))
