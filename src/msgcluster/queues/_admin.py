"""Operations a backend *may* offer beyond the queue contract: inspection and repair.

The ``msgcluster`` CLI's queue commands (``qstat``, ``dlq``, ``ls``, ``get``,
``delete``, ``fail``, ``invalid``, ``purge``, ``redrive``, ``reset``) use
these. A backend that can support them implements :class:`QueueAdmin` on
its queue object (check with ``isinstance(queue, QueueAdmin)``); one that
cannot (SQS cannot list or fetch a message by id) implements what it can
and the CLI says which operation the scheme does not support.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["MessageInfo", "QueueAdmin", "QueueStats"]


class QueueStats(msgspec.Struct, kw_only=True, frozen=True):
    """Counts of one queue (``None``: the backend cannot tell)."""

    name: str
    visible: int  # ready to be received now
    in_flight: int  # received, not yet acked, visibility not expired
    delayed: int | None = None  # sent with a delay not yet over
    dead_letters: int | None = None  # in this queue's DLQ
    oldest_age_seconds: float | None = None  # the oldest visible message's age
    fifo: bool = False


class MessageInfo(msgspec.Struct, kw_only=True, frozen=True):
    """One stored message as an operator sees it (the body is not decoded)."""

    id: str
    state: str  # "ready", "in_flight", "delayed", "dead_letter"
    body: bytes
    receive_count: int
    sent_at: float  # Unix seconds
    visible_at: float | None = None  # when it can be received (again)
    group_id: str | None = None
    attributes: dict[str, str] = {}
    dead_letter_reason: str | None = None


@runtime_checkable
class QueueAdmin(Protocol):
    """Inspection and repair, by message id; every call is one operator action."""

    async def stats(self) -> QueueStats:
        """Counts of this queue (and its DLQ where it has one)."""
        ...

    async def dead_letter_stats(self) -> QueueStats:
        """Counts of this queue's DLQ."""
        ...

    def list_messages(
        self, *, dead_letters: bool = False, page_size: int = 100
    ) -> AsyncIterator[MessageInfo]:
        """Every message (or every dead letter), page by page: not only the first few."""
        ...

    async def get_message(self, message_id: str) -> MessageInfo | None:
        """One message by id (also looked up among dead letters); None if absent."""
        ...

    async def delete_message(self, message_id: str) -> bool:
        """Remove it whatever its state; False if it was not there."""
        ...

    async def fail_message(self, message_id: str) -> bool:
        """Count a failed receive: visible again, ``receive_count`` + 1 (and to
        the DLQ if that reaches the maximum)."""
        ...

    async def dead_letter_message(self, message_id: str, reason: str = "") -> bool:
        """Move it to the DLQ now (the CLI's ``invalid``)."""
        ...

    async def reset_message(self, message_id: str) -> bool:
        """Ready again now, as if just sent: receive count 0, no lease, no delay."""
        ...

    async def purge(self, *, dead_letters: bool = False) -> int:
        """Delete every message (or every dead letter), paginated; how many."""
        ...

    async def redrive(self, message_id: str | None = None) -> int:
        """Move one dead letter (or all of them) back to the queue, ready, with
        receive count 0; how many moved."""
        ...
