"""The lifecycle the AWS backends share: owned clients, cancellable polls, close.

A long poll can hold a request for up to 20 s; ``aclose()`` cancels every
poll in progress (the waiting ``receive`` raises ``QueueClosedError``) so
shutdown never waits one out, then closes what the handle opened.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Self

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from .. import _aws
from .._errors import QueueClosedError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

__all__ = ["QueueHandle"]


class QueueHandle:
    """Base of a backend's queue object: ``async with``, idempotent ``aclose``."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._closed = False
        self._polls: set[anyio.CancelScope] = set()
        # What this handle opened itself (a client it created): closed with it.
        self._stack: AsyncExitStack | None = None

    @property
    def uri(self) -> str:
        return self._uri

    async def _own_client(
        self, service: str, params: dict[str, Any], endpoint_url: str | None = None
    ) -> Any:
        """An aiobotocore client this handle creates, and closes with itself:
        from the ``session`` option (or a new session), ``region``/``endpoint``
        parameters, a pool of ``max_connections`` and botocore's standard
        retries (throttling, connection errors: the transport's job)."""
        session: Any = params.get("session") or AioSession()  # (stubs overload per service)
        config = AioConfig(
            max_pool_connections=params.get("max_connections", 16),
            retries={"mode": "standard"},
            connect_timeout=_aws.CONNECT_TIMEOUT,
        )
        endpoint = params.get("endpoint", endpoint_url)
        if endpoint is None:
            common, each = _aws.env_endpoints()
            endpoint = each.get(service, common)
        if self._stack is None:
            self._stack = AsyncExitStack()
        return await _aws.open_client(
            self._stack,
            session,
            service,
            config=config,
            region=_aws.region_for(session, params.get("region")),
            endpoint=None if endpoint is None else _aws.check_endpoint(endpoint, "endpoint"),
        )

    @contextmanager
    def _poll_scope(self) -> Iterator[None]:
        """Run a receive's requests so that ``aclose()`` can cancel them.

        Raises QueueClosedError when the poll was cut short by a close:
        whatever the cancelled request took reappears after its visibility
        timeout, so nothing is lost.
        """
        scope = anyio.CancelScope()
        self._polls.add(scope)
        try:
            with scope:
                yield
        finally:
            self._polls.discard(scope)
        if scope.cancelled_caught or self._closed:
            raise QueueClosedError(f"{self._uri} was closed during a receive")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for scope in self._polls:
            scope.cancel()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosedError(f"{self._uri} is closed")
