"""What every driver shares: the contract's checks and per-entry results
around send, ack and visibility changes, and the lifecycle (owned clients,
cancellable polls, close).

A driver implements the requests only: ``_send_prepared`` (validated
entries), ``_ack_receipts`` and ``_change_receipts`` (checked receipts), each
returning an outcome per index; the checks, the per-message errors and the
result lists live here, once. A long poll can hold a request for up to 20 s;
``aclose()`` cancels every poll in progress (the waiting ``receive`` raises
``QueueClosedError``) so shutdown never waits one out, then closes what the
handle opened.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from .. import _aws
from .._errors import MsgclusterError, QueueClosedError, ReceiptError, ValidationError
from ._checks import check_ack_batch, check_send_batch, check_visibility, prepare_message
from ._contract import AckResult, ReceivedMessage, SendResult

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType

    from ._checks import PreparedMessage
    from ._contract import Capabilities, OutgoingMessage

__all__ = ["QueueHandle"]


class QueueHandle:
    """Base of a backend's queue object: the contract's send/ack/visibility
    calls over the driver's requests, ``async with``, idempotent ``aclose``."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._closed = False
        self._polls: set[anyio.CancelScope] = set()
        # What this handle opened itself (a client it created): closed with it.
        self._stack: AsyncExitStack | None = None
        # The AWS client of a backend that has one, and the capabilities it
        # reads from the queue when it opens.
        self._client: Any = None
        self._capabilities: Capabilities | None = None

    @property
    def uri(self) -> str:
        return self._uri

    # ------------------------------------------------- what a driver provides

    @property
    def capabilities(self) -> Capabilities:
        assert self._capabilities is not None
        return self._capabilities

    @property
    def client(self) -> Any:
        """The aiobotocore client this queue uses (None on memory://)."""
        return self._client

    def _dedup_by_content(self) -> bool:
        """Whether the queue deduplicates FIFO sends by body (no id needed)."""
        return False

    async def _send_prepared(self, entries: dict[int, PreparedMessage]) -> dict[int, SendResult]:
        """Send validated entries (by index in the call); a result for each."""
        raise NotImplementedError

    def _receipt(self, message: object) -> Any:
        """The delivery's receipt, as the driver's requests take it."""
        receipt = getattr(message, "receipt", None)
        if not isinstance(message, ReceivedMessage) or not receipt or not isinstance(receipt, str):
            raise ValidationError(f"expected a ReceivedMessage, got {type(message).__name__}")
        return receipt

    async def _ack_receipts(self, receipts: dict[int, Any]) -> dict[int, MsgclusterError]:
        """Delete these deliveries; the error of each that failed."""
        raise NotImplementedError

    async def _change_receipts(
        self, changes: dict[int, tuple[Any, float]]
    ) -> dict[int, MsgclusterError]:
        """Set these deliveries' visibility; the error of each that failed."""
        raise NotImplementedError

    # -------------------------------------------------------- the contract

    async def send(self, messages: Sequence[bytes | str | OutgoingMessage]) -> list[SendResult]:
        await self._checkpoint()
        caps = self.capabilities
        check_send_batch(messages, caps)
        results: dict[int, SendResult] = {}
        valid: dict[int, PreparedMessage] = {}
        for index, item in enumerate(messages):
            try:
                valid[index] = prepare_message(
                    item, caps, content_based_dedup=self._dedup_by_content()
                )
            except ValidationError as exc:
                results[index] = SendResult(index=index, error=exc)
        if valid:
            results.update(await self._send_prepared(valid))
        return [results[i] for i in range(len(messages))]

    async def ack(self, messages: Sequence[ReceivedMessage]) -> list[AckResult]:
        await self._checkpoint()
        check_ack_batch(messages, self.capabilities)
        errors, receipts = self._receipts(messages)
        if receipts:
            errors.update(await self._ack_receipts(receipts))
        return _ack_results(messages, errors)

    async def nack(self, message: ReceivedMessage, delay: float = 0.0) -> None:
        await self._checkpoint()
        check_visibility(delay, self.capabilities, "delay")
        await self._change_one(message, delay)

    async def extend(self, message: ReceivedMessage, seconds: float) -> None:
        await self._checkpoint()
        check_visibility(seconds, self.capabilities, "seconds")
        await self._change_one(message, seconds)

    async def change_visibility(
        self, changes: Sequence[tuple[ReceivedMessage, float]]
    ) -> list[AckResult]:
        """The batch form of nack/extend: up to ``max_ack_batch`` (message,
        seconds) pairs in one request; one result per pair."""
        await self._checkpoint()
        messages = [message for message, _ in changes]
        check_ack_batch(messages, self.capabilities)
        for _, seconds in changes:
            check_visibility(seconds, self.capabilities, "seconds")
        errors, receipts = self._receipts(messages)
        if receipts:
            errors.update(
                await self._change_receipts({i: (r, changes[i][1]) for i, r in receipts.items()})
            )
        return _ack_results(messages, errors)

    async def _change_one(self, message: ReceivedMessage, seconds: float) -> None:
        error = (await self._change_receipts({0: (self._receipt(message), seconds)})).get(0)
        if error is not None:
            raise error

    def _receipts(
        self, messages: Sequence[object]
    ) -> tuple[dict[int, MsgclusterError], dict[int, Any]]:
        """(errors, receipts) by index: a message without a valid receipt fails alone."""
        errors: dict[int, MsgclusterError] = {}
        receipts: dict[int, Any] = {}
        for index, message in enumerate(messages):
            try:
                receipts[index] = self._receipt(message)
            except (ValidationError, ReceiptError) as exc:
                errors[index] = exc
        return errors, receipts

    # ------------------------------------------------------------ lifecycle

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

    async def _checkpoint(self) -> None:
        # Every call yields once, as a request would: a busy consumer loop on
        # an in-process driver must not starve the other tasks.
        await anyio.lowlevel.checkpoint()
        self._check_open()

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


def _ack_results(messages: Sequence[object], errors: dict[int, MsgclusterError]) -> list[AckResult]:
    return [
        AckResult(
            index=index,
            id=message.id if isinstance(message, ReceivedMessage) else "",
            error=errors.get(index),
        )
        for index, message in enumerate(messages)
    ]
