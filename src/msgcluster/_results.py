"""Per-entry outcome of batch sends: nothing is dropped, every failure is named."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import msgspec

from ._errors import BatchSendError
from ._schemas import RecordKey

__all__ = ["BatchSendResult", "EntryFailure"]


class EntryFailure(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a batch that was not sent.

    ``sender_fault`` is AWS's verdict (retrying the same entry will fail
    again); ``maybe_sent`` is True when the request's fate is unknown (no
    response), in which case the record is kept and the message may arrive.
    ``key`` is the kept record's key when ``maybe_sent``, else None (the
    record of an entry that was definitely not sent is removed).
    """

    index: int
    key: RecordKey | None
    code: str
    message: str
    sender_fault: bool = True
    maybe_sent: bool = False


class BatchSendResult(Sequence[RecordKey | None]):
    """The keys of a batch send in input order (``None`` where an entry failed).

    Iterating yields one key per input body, so ``keys = await
    send_message_batch(...)`` reads naturally; ``failures`` lists what was not
    sent and why.
    """

    __slots__ = ("failures", "keys", "message_ids")

    def __init__(
        self,
        keys: list[RecordKey | None],
        message_ids: list[str | None],
        failures: list[EntryFailure],
    ) -> None:
        self.keys = keys
        self.message_ids = message_ids
        self.failures = sorted(failures, key=lambda f: f.index)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def sent(self) -> int:
        return sum(1 for m in self.message_ids if m is not None)

    @overload
    def __getitem__(self, index: int) -> RecordKey | None: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RecordKey | None]: ...
    def __getitem__(self, index: int | slice) -> RecordKey | Sequence[RecordKey | None] | None:
        return self.keys[index]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[RecordKey | None]:
        return iter(self.keys)

    def __repr__(self) -> str:
        return f"<BatchSendResult entries={len(self.keys)} failed={len(self.failures)}>"

    def raise_for_failures(self) -> None:
        if not self.failures:
            return
        first = self.failures[0]
        raise BatchSendError(
            f"{len(self.failures)} of {len(self.keys)} message(s) were not sent; first: entry "
            f"{first.index}: {first.code}: {first.message} (see .result.failures)",
            self,
        )
