"""What a handler may know about its message, besides the body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..queues import Queue, ReceivedMessage
    from ..read._records import ParsedRecord

__all__ = ["MessageContext"]


@dataclass(slots=True)
class MessageContext:
    """Passed as the second argument to handlers that take two.

    ``record`` is the tracked record view (ids, ``get_message_record()``,
    ``get_message_cluster()`` for cluster tasks) or None for a plain body.
    """

    message: ReceivedMessage
    queue: Queue | None
    record: ParsedRecord[Any] | None = None

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def receive_count(self) -> int:
        return self.message.receive_count

    @property
    def attributes(self) -> dict[str, str]:
        return self.message.attributes

    async def extend(self, seconds: float) -> None:
        """Keep the message invisible ``seconds`` longer than now (the worker's
        heartbeat does this already while the handler runs). Not available
        under Lambda, where the function's timeout bounds the handler."""
        if self.queue is None:
            from .._errors import ConfigurationError

            raise ConfigurationError("extend() needs a queue; under Lambda there is none")
        await self.queue.extend(self.message, seconds)
